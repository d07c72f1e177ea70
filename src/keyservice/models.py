"""Every table, imported in one place for Alembic and for tests."""

from keyservice.api_keys.models import ApiKey
from keyservice.audit.models import AuditEvent
from keyservice.auth.models import RefreshToken, RevokedFamily, SigningKey
from keyservice.auth.throttle_models import ThrottleFailure
from keyservice.console.models import ConsoleSpent
from keyservice.database import Base
from keyservice.principals.models import Principal
from keyservice.scopes.models import Scope

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "ConsoleSpent",
    "Principal",
    "RefreshToken",
    "RevokedFamily",
    "Scope",
    "SigningKey",
    "ThrottleFailure",
]
