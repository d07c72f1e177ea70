"""A user changes their own password: the current one first, throttled as a sign-in."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.auth.grants import password as password_grant
from keyservice.auth.service import Caller
from keyservice.context import AppContext
from keyservice.exceptions import Forbidden, InvalidGrant, ValidationFailed
from keyservice.principals.models import Principal
from keyservice.security import ip as ipmod
from keyservice.users import service as users_service

WRONG_CURRENT = "The current password is wrong."


async def change(
    ctx: AppContext,
    session: AsyncSession,
    *,
    user_id: str,
    current: str,
    new: str,
    ip: ipmod.IPAddress | None,
    via: str = "",
) -> Principal:
    """Check `current` as a sign-in would (throttled per username and address, a wrong one
    audited as a failed `login`), then set `new`: every sign-in session of the user ends,
    the console's too (users.service.update). Forbidden for a wrong current password,
    SlowDown past the sign-in throttle, ValidationFailed for a new password refused.
    """
    users_service.check_password(new, field="new_password")
    if new == current:
        raise ValidationFailed(
            "The new password is the same as the current one; choose another.",
            field="new_password",
        )
    # No transaction stays open across the check: on SQLite one is the write lock (BEGIN
    # IMMEDIATE), which the sign-in's own reads and writes would wait for. What `session`
    # read so far (the console's viewer) was only read.
    if session.in_transaction():
        await session.commit()
    async with ctx.database.sessionmaker() as lookup:
        user = await users_service.get(lookup, user_id=user_id)
    caller = Caller(ip=ip)
    try:
        await password_grant.sign_in(
            ctx,
            username=user.name,
            password=current,
            caller=caller,
            reason_prefix=f"{via}password change: ",
        )
    except InvalidGrant:
        raise Forbidden(WRONG_CURRENT) from None
    return await users_service.update(
        session,
        ctx,
        user_id=user.id,
        password=new,
        actor=f"user:{user.name}",
        ip=caller.ip_text,
        actor_id=user.id,
    )
