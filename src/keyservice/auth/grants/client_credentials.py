"""grant_type=client_credentials: an API key becomes an access token + refresh token."""

from __future__ import annotations

from keyservice.api_keys.models import ApiKey
from keyservice.auth import service, throttle
from keyservice.auth.client_auth import ClientCredentials
from keyservice.auth.service import Caller, Issued
from keyservice.auth.store import KeyRecord
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.exceptions import InvalidRequest, InvalidScope, SlowDown
from keyservice.principals.models import Principal
from keyservice.security.tokens import is_client_id, parse_api_key

EVENT = "token.exchange"


async def authenticate(
    ctx: AppContext, creds: ClientCredentials, caller: Caller, *, event: str
) -> tuple[ApiKey, Principal]:
    """Authenticate a key by any method; audit and raise invalid_client on failure."""
    if creds.method == "api_key":
        assert creds.api_key is not None
        parsed = parse_api_key(creds.api_key)
        if parsed is None:
            return await _authenticate_legacy(ctx, creds.api_key, caller, event=event)
        client_id, secret = parsed
    else:
        assert creds.client_id is not None and creds.secret is not None
        client_id, secret = creds.client_id, creds.secret
    found = None
    # Anything but a client id cannot exist (it may not even be storable), and has no
    # lock-out of its own: counted per client, "user:dora" would be dora's sign-ins.
    subject = ""
    if is_client_id(client_id):
        found = await ctx.tokens.fetch_key(client_id)
        subject = client_id
    # Checked once the key is read, so that a throttled refusal names it in the audit log.
    try:
        await ctx.throttle.check(client=subject, ip=caller.ip_text)
        authentic = service.authenticate_secret(ctx, found, secret)
        if authentic is not None:
            # Concurrent attempts all passed the check before any of them failed: past the
            # limit even the right secret is refused, as it is after a lock-out.
            ctx.throttle.check_local(client=subject, ip=caller.ip_text)
    except SlowDown as exc:
        await service.refuse(
            ctx,
            exc,
            event=event,
            reason="throttled",
            caller=caller,
            key_id=found.key_id if found is not None else None,
            principal_id=found.principal_id if found is not None else None,
            actor=f"key:{client_id}" if found is not None else None,
        )
    if authentic is None:
        await service.refuse(
            ctx,
            service.invalid_client(creds.basic),
            event=event,
            reason=_wrong_secret(ctx, found),
            caller=caller,
            key_id=found.key_id if found is not None else None,
            principal_id=found.principal_id if found is not None else None,
            actor=f"key:{client_id}" if found is not None else None,
            throttle_subject=subject,
        )
    assert found is not None
    await service.rehash_if_needed(ctx, found, secret, authentic)
    return found.objects()


# For the audit log only: the client is told no more than for any wrong secret.
RETIRED_SECRET = "key hashed under a retired server secret"


def _wrong_secret(ctx: AppContext, found: KeyRecord | None) -> str:
    """Why a secret did not match: no such client, a wrong secret, or a key whose HMAC was
    made under a server secret this process no longer knows (no secret matches it: the
    fallback was removed before the key was used, README "Rotating the server secret")."""
    if found is None:
        return "unknown client"
    if found.hashed_under not in (None, ctx.hasher.label, ctx.hasher.fallback_label):
        return RETIRED_SECRET
    return "wrong secret"


async def _authenticate_legacy(
    ctx: AppContext, key_string: str, caller: Caller, *, event: str
) -> tuple[ApiKey, Principal]:
    from keyservice.api_keys import legacy

    await throttle.enforce(ctx, client=None, caller=caller, event=event)
    found = await legacy.authenticate(ctx, key_string)
    if found is None:
        await service.refuse(
            ctx,
            service.invalid_client(False, "The API key is malformed or unknown."),
            event=event,
            reason="malformed key",
            caller=caller,
            throttle_subject="",  # the IP's failure: a key string names no client id
        )
    return found


async def handle(
    ctx: AppContext, form: dict[str, str], creds: ClientCredentials | None, caller: Caller
) -> Issued:
    """Validate the key, then generate and persist the tokens."""
    if creds is None:
        raise InvalidRequest(
            "client_credentials needs the key: HTTP Basic, client_id + client_secret, or api_key.",
            reason="no client credentials",
        )
    requested = service.parse_scope(form.get("scope"))
    key, owner = await authenticate(ctx, creds, caller, event=EVENT)
    now = utcnow()
    refusal = service.key_refusal(
        key=key,
        owner=owner,
        caller=caller,
        now=now,
        legacy_until=ctx.settings.legacy_keys_until,
    )
    if refusal is not None:
        description = service.describe_key_refusal(refusal, key=key, caller=caller)
        await service.refuse(
            ctx,
            service.invalid_client(creds.basic, description),
            event=EVENT,
            reason=refusal,
            caller=caller,
            key=key,
            actor=service.actor_for(key=key, owner=None),
            throttle_subject=key.client_id,
        )
    try:
        scopes = service.grant_scopes(requested, service.available_scopes(owner=owner, key=key))
    except InvalidScope as exc:
        await service.refuse(
            ctx,
            exc,
            event=EVENT,
            reason="scope not held",
            caller=caller,
            key=key,
            actor=service.actor_for(key=key, owner=None),
        )
    issued = await service.issue(
        ctx, owner=owner, key=key, scopes=scopes, caller=caller, event=EVENT
    )
    assert issued is not None  # only a refresh can lose a race
    return issued
