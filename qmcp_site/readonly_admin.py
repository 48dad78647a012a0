"""The admin of an audit trail: rows are shown, never added, changed or deleted."""

from django.contrib import admin


class ReadOnlyAdmin(admin.ModelAdmin):
    """A model admin that shows every field read-only and refuses add, change and delete
    to everyone, superusers included."""

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
