from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.forms import UserChangeForm as BaseUserChangeForm
from django.contrib.auth.forms import UserCreationForm as BaseUserCreationForm
from django.template.response import TemplateResponse
from django.utils.cache import add_never_cache_headers
from oauth2_provider.admin import AccessTokenAdmin as DotAccessTokenAdmin
from oauth2_provider.models import AccessToken

from qmcp_site.readonly_admin import ReadOnlyAdmin
from users.models import ApiToken, OAuthEvent, User
from users.oauth import oauth_token_revoke
from users.services import api_token_create, api_token_revoke


class UserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "name", "surname")


class UserChangeForm(BaseUserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    ordering = ("email",)
    list_display = ("email", "name", "surname", "company", "is_staff", "is_active")
    list_filter = ("is_staff", "is_superuser", "is_active", "gender", "groups")
    search_fields = ("email", "name", "surname", "company")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        (
            "Profile",
            {
                "fields": (
                    ("name", "surname"),
                    "about_me",
                    ("phone", "date_of_birth"),
                    "address",
                    ("gender", "company", "salary"),
                )
            },
        ),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "name", "surname", "password1", "password2"),
            },
        ),
    )


class ApiTokenForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiToken.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[ApiToken.Scope.TOOLS_READ, ApiToken.Scope.TOOLS_CALL],
    )

    class Meta:
        model = ApiToken
        fields = ("user", "name", "scopes", "expires_at")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    form = ApiTokenForm
    list_display = (
        "name",
        "user",
        "prefix",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__email")
    autocomplete_fields = ("user",)
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    fields = (
        "user",
        "name",
        "scopes",
        "expires_at",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    )
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        # A token's owner and scopes are fixed once it exists; make a new one instead.
        if obj is not None:
            return self.readonly_fields + ("user", "scopes", "name")
        return self.readonly_fields

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        token, secret = api_token_create(
            user=obj.user, name=obj.name, scopes=obj.scopes, expires_at=obj.expires_at
        )
        obj.pk = token.pk
        # Kept on this request's object only: response_add shows it on the page it renders.
        obj.new_secret = secret

    def response_add(self, request, obj, post_url_continue=None):
        """The new token's secret on a page of its own, rendered once and never cached; it
        never goes into a message (the messages cookie is signed, not encrypted), the
        session or a redirect."""
        secret = getattr(obj, "new_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        token = ApiToken.objects.select_related("user").get(pk=obj.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Token created: copy its secret now",
            "opts": self.opts,
            "token": token,
            "secret": secret,
        }
        request.current_app = self.admin_site.name
        response = TemplateResponse(request, "admin/users/apitoken/token_created.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        for token in queryset:
            api_token_revoke(token=token)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


# --- OAuth: DOT's admin of clients and tokens, with an audited revoke, and the audit trail.


@admin.action(permissions=["change"], description="Revoke selected tokens")
def revoke_oauth_tokens(modeladmin, request, queryset):
    count = 0
    for token in queryset.select_related("user", "application"):
        oauth_token_revoke(token=token, actor=request.user)
        count += 1
    modeladmin.message_user(request, f"Revoked {count} OAuth tokens.", messages.SUCCESS)


admin.site.unregister(AccessToken)


@admin.register(AccessToken)
class OAuthAccessTokenAdmin(DotAccessTokenAdmin):
    """DOT's token list with its clear-text column hidden (only checksums are stored) and
    an audited revoke action."""

    list_display = ("user", "application", "scope", "resource", "expires", "created")
    exclude = ("token",)
    actions = [revoke_oauth_tokens]


@admin.register(OAuthEvent)
class OAuthEventAdmin(ReadOnlyAdmin):
    """The consent audit trail: read-only."""

    list_display = ("created_at", "kind", "user_label", "client_name", "scopes", "actor")
    list_filter = ("kind",)
    search_fields = ("user_label", "client_name", "client_id")
    date_hierarchy = "created_at"
