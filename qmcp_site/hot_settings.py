"""Settings read on every request, without ``django.conf.settings``' lazy wrapper each time.

``HOT_SETTINGS.NAME`` is ``settings.NAME``, copied into this plain object on first read
(``settings``' ``LazyObject.__getattribute__`` costs some 20 Python opcodes a read, several
times a request). Every copy is dropped when Django says a setting changed
(``setting_changed``: ``override_settings`` and pytest-django's ``settings`` fixture).
"""

from django.conf import settings
from django.core.signals import setting_changed


class HotSettings:
    def __getattr__(self, name: str):
        value = getattr(settings, name)
        self.__dict__[name] = value
        return value

    def clear(self, **kwargs) -> None:
        self.__dict__.clear()


HOT_SETTINGS = HotSettings()
setting_changed.connect(HOT_SETTINGS.clear, dispatch_uid="qmcp_hot_settings")
