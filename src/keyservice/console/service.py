"""Console work that is not a page: signing in (throttled and audited like the password grant)."""

from __future__ import annotations

from keyservice.audit import service as audit
from keyservice.auth import throttle
from keyservice.auth.grants.password import EVENT, authenticate_user
from keyservice.auth.service import Caller, refuse
from keyservice.context import AppContext
from keyservice.exceptions import InvalidGrant
from keyservice.principals.models import Principal
from keyservice.security import ip as ipmod

WRONG_CREDENTIALS = "Wrong username or password, or the account is disabled."


async def sign_in(
    ctx: AppContext, *, username: str, password: str, ip: ipmod.IPAddress | None
) -> Principal:
    """Return the user for these credentials, or raise InvalidGrant / SlowDown (audited)."""
    caller = Caller(ip=ip)
    subject = f"user:{username}"
    await throttle.enforce(ctx, client=subject, caller=caller, event=EVENT)
    user = await authenticate_user(ctx, username=username, password=password)
    if user is None or not user.usable:
        await refuse(
            ctx,
            InvalidGrant(WRONG_CREDENTIALS),
            event=EVENT,
            reason=f"console: {'wrong username or password' if user is None else 'user disabled'}",
            caller=caller,
            principal_id=user.id if user is not None else None,
            actor=f"user:{user.name}" if user is not None else None,
            throttle_subject=subject,
        )
    async with ctx.database.sessionmaker() as session:
        audit.record(
            session,
            type=EVENT,
            actor=f"user:{user.name}",
            principal_id=user.id,
            ip=caller.ip_text,
            reason="console sign-in",
        )
        await session.commit()
    return user
