"""Console work that is not a page: signing in (throttled and audited like the password grant)."""

from __future__ import annotations

from keyservice.audit import service as audit
from keyservice.auth.grants import password as password_grant
from keyservice.auth.grants.password import EVENT
from keyservice.auth.service import Caller
from keyservice.context import AppContext
from keyservice.principals.models import Principal
from keyservice.security import ip as ipmod


async def sign_in(
    ctx: AppContext, *, username: str, password: str, ip: ipmod.IPAddress | None
) -> Principal:
    """Return the user for these credentials, or raise InvalidGrant / SlowDown (audited)."""
    caller = Caller(ip=ip)
    user = await password_grant.sign_in(
        ctx, username=username, password=password, caller=caller, reason_prefix="console: "
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
