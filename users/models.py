import hashlib

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.db import models
from django.db.models.functions import Lower, Upper
from django.utils import timezone


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra_fields):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra_fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def get_by_natural_key(self, username):
        """The account of an email in any case (emails are unique regardless of case), so
        logins and ``createsuperuser``'s "already taken" check ignore case too."""
        return self.get(**{f"{self.model.USERNAME_FIELD}__iexact": username})

    def create_user(self, email, password=None, **extra_fields):
        extra_fields.setdefault("is_staff", False)
        extra_fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra_fields)

    def create_superuser(self, email, password=None, **extra_fields):
        extra_fields["is_staff"] = True
        extra_fields["is_superuser"] = True
        return self._create_user(email, password, **extra_fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person: a reviewer or admin who logs in, or a record managed by the user tools."""

    class Gender(models.TextChoices):
        FEMALE = "female", "Female"
        MALE = "male", "Male"
        NON_BINARY = "non_binary", "Non-binary"
        OTHER = "other", "Other"
        UNSPECIFIED = "", "Unspecified"

    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    surname = models.CharField(max_length=150, blank=True)
    about_me = models.TextField(blank=True)
    phone = models.CharField(max_length=32, blank=True)
    date_of_birth = models.DateField(null=True, blank=True)
    address = models.CharField(max_length=255, blank=True)
    gender = models.CharField(max_length=16, choices=Gender.choices, blank=True)
    company = models.CharField(max_length=150, blank=True)
    salary = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    is_staff = models.BooleanField(
        default=False, help_text="Can log into the admin and the reviewer pages."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    EMAIL_FIELD = "email"
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["id"]
        # user_list's icontains is UPPER(column) LIKE UPPER('%term%'): trigram indexes on
        # those expressions serve it. PostgreSQL only (see the migration); SQLite scans.
        indexes = [
            GinIndex(OpClass(Upper(column), name="gin_trgm_ops"), name=f"users_user_{column}_trgm")
            for column in ("name", "surname", "email")
        ]
        constraints = [
            # ADMIN@x.test and admin@x.test are one mailbox to people: one account.
            models.UniqueConstraint(
                Lower("email"),
                name="users_user_email_unique_ci",
                violation_error_message="A user with this email already exists.",
            )
        ]

    def __str__(self):
        return self.get_full_name() or self.email

    def get_full_name(self):
        return f"{self.name} {self.surname}".strip()

    def get_short_name(self):
        return self.name or self.email

    @property
    def is_privileged(self) -> bool:
        """Staff and superusers: accounts the user tools never read or change."""
        return self.is_staff or self.is_superuser


def hash_token(secret: str) -> str:
    """Token secrets are 256-bit random, so a plain SHA-256 is a safe and fast digest."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for programs. Only the SHA-256 of the secret is stored."""

    class Scope(models.TextChoices):
        TOOLS_CALL = "tools:call", "Call tools"
        TOOLS_READ = "tools:read", "Read tools and invocations"
        HITL_RESPOND = "hitl:respond", "Respond to human requests"
        USERS_READ = "users:read", "Read managed users' profiles (/api/users/)"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, help_text="The first characters, to recognise it.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class OAuthEvent(models.Model):
    """The audit trail of OAuth consent: every grant a person gives a client and every
    revocation, kept when the client or its tokens are gone."""

    class Kind(models.TextChoices):
        GRANTED = "granted", "Consent given"
        DENIED = "denied", "Consent refused"
        REVOKED = "revoked", "Client's access revoked"
        TOKEN_REVOKED = "token_revoked", "Token revoked"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    user = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.SET_NULL, related_name="oauth_events"
    )
    user_label = models.CharField(max_length=255, blank=True)
    application = models.ForeignKey(
        "oauth2_provider.Application",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    client_id = models.CharField(max_length=255, help_text="Kept if the client is deleted.")
    client_name = models.CharField(max_length=255, blank=True)
    scopes = models.CharField(max_length=255, blank=True)
    redirect_uri = models.TextField(blank=True)
    actor = models.ForeignKey(
        User,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Who acted: the user, or a staff member revoking in the admin.",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "OAuth event"

    def __str__(self):
        client = self.client_name or self.client_id
        return f"{self.get_kind_display()}: {client} for {self.user_label}"
