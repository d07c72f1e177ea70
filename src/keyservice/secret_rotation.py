"""Moving a deployment to a new server secret (`KEYSERVICE_SECRET_KEY_FALLBACK`).

The server secret keys three stored things: the HMACs of API-key secrets (and legacy
keys' lookups), the HMACs of refresh tokens, and the encryption of the signing keys. With
the previous secret set as the fallback, each is still accepted and moves to the current
secret without anyone re-issuing anything:

- a key whose HMAC matches under the fallback is hashed again under the current secret at
  its next exchange (`auth.service.rehash_if_needed`); keys carry the label of the secret
  their HMAC was made under (`api_key.hashed_under`), so what still needs the fallback can
  be counted (`keyservice secret-key status`);
- a refresh token is looked up under the fallback when the current HMAC finds nothing; its
  successor is made under the current secret, so the fallback's tokens are gone one
  refresh-token lifetime after the switch;
- a signing key that only the fallback decrypts is encrypted again under the current
  secret when the server starts (`settle`).

Console sessions and the sign-in throttle's counters are keyed by the current secret only:
the switch signs console users out and starts the counters afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from keyservice.api_keys.models import ApiKey
from keyservice.audit import service as audit
from keyservice.auth.models import SigningKey
from keyservice.context import AppContext
from keyservice.database import utcnow
from keyservice.principals.models import Principal
from keyservice.security.jwt import WrongSecretError

log = logging.getLogger(__name__)
# Keys labelled per statement at start-up (settle).
LABEL_BATCH = 2000


def _hashed() -> ColumnElement[bool]:
    return or_(ApiKey.secret_hash.is_not(None), ApiKey.legacy_lookup.is_not(None))


async def settle(context: AppContext, session: AsyncSession) -> None:
    """At start-up, once the signing keys are loaded (they prove the secret): encrypt
    again under the current secret the signing keys only the fallback opened; and, with
    no fallback set, label the keys made before labels existed with the current secret
    (a key under any other secret could not be used then anyway). Both are idempotent:
    every worker of every replica runs this."""
    moved = await context.keyring.reencrypt(session) if context.keyring.under_fallback else []
    if moved:
        # The switch to the new secret takes effect here, at the first start with it (and
        # once: reencrypt moves each key once, whichever worker or replica starts first):
        # who and when is for the audit log, in the move's transaction. The labels are
        # what `keyservice secret-key status` shows, derived from the secrets, never them.
        audit.record(
            session,
            type="server_secret.switched",
            actor="server",
            reason=f"server secret {context.hasher.label} in use, "
            f"{context.hasher.fallback_label} the fallback; signing key(s) "
            f"{', '.join(moved)} encrypted again under the new secret",
        )
    await session.commit()
    if moved:
        log.info(
            "signing key(s) %s now encrypted under the current server secret",
            ", ".join(moved),
        )
    if context.hasher.fallback_label is None:
        try:
            await _label_unlabelled(session, context.hasher.label)
        except SQLAlchemyError as exc:
            # A lock held elsewhere, a statement timeout: the keys are labelled as they are
            # used, or at the next start. Not a reason to refuse serving.
            await session.rollback()
            log.warning(
                "left some API keys without the label of their server secret (%s); "
                "they are labelled as they are used, or at the next start",
                type(exc).__name__,
            )


async def _label_unlabelled(session: AsyncSession, label: str) -> None:
    """Label every key with an HMAC but no label, in batches along the primary key (each
    one statement well under the statement timeout, whatever the table's size), after one
    look for any: what every later start does."""
    unlabelled = (ApiKey.hashed_under.is_(None), _hashed())
    if await session.scalar(select(ApiKey.id).where(*unlabelled).limit(1)) is None:
        return
    after = ""
    while True:
        ids = list(
            await session.scalars(
                select(ApiKey.id).where(ApiKey.id > after).order_by(ApiKey.id).limit(LABEL_BATCH)
            )
        )
        if not ids:
            return
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id.in_(ids), *unlabelled)
            .values(hashed_under=label)
            .execution_options(synchronize_session=False)
        )
        await session.commit()
        after = ids[-1]


@dataclass(frozen=True)
class SecretStatus:
    """What each server secret still holds: for `keyservice secret-key status`."""

    label: str
    fallback_label: str | None
    # Keys neither revoked nor expired, by the label of the secret their HMAC is under.
    live_keys_current: int
    live_keys_fallback: int
    live_keys_unlabelled: int
    live_keys_other: int
    signing_keys_current: list[str]
    signing_keys_fallback: list[str]
    signing_keys_unreadable: list[str]
    refresh_lifetime_seconds: int
    # The live keys that may still need the fallback (under it, or not labelled yet while
    # it is set): id, client id, name and owner, for telling their owners.
    waiting_keys: list[dict[str, str]]

    @property
    def fallback_still_needed(self) -> bool:
        """Whether anything counted here still needs the fallback (refresh tokens, which
        are not counted, need it for one refresh-token lifetime after the switch)."""
        return bool(
            self.fallback_label is not None
            and (self.live_keys_fallback or self.live_keys_unlabelled or self.signing_keys_fallback)
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "secret_label": self.label,
            "fallback_label": self.fallback_label,
            "live_api_keys": {
                "current": self.live_keys_current,
                "fallback": self.live_keys_fallback,
                "unlabelled": self.live_keys_unlabelled,
                "other": self.live_keys_other,
            },
            "signing_keys": {
                "current": self.signing_keys_current,
                "fallback": self.signing_keys_fallback,
                "unreadable": self.signing_keys_unreadable,
            },
            "refresh_token_lifetime_seconds": self.refresh_lifetime_seconds,
            "keys_needing_fallback": self.waiting_keys,
            "fallback_still_needed": self.fallback_still_needed,
        }


async def status(context: AppContext) -> SecretStatus:
    now = utcnow()
    label, fallback = context.hasher.label, context.hasher.fallback_label
    # Keys with an HMAC that are neither revoked nor expired: what a secret still serves.
    live = (_hashed(), ApiKey.revoked_at.is_(None), ApiKey.expires_at > now)
    async with context.database.sessionmaker() as session:
        counts = dict(
            (
                await session.execute(
                    select(ApiKey.hashed_under, func.count())
                    .where(*live)
                    .group_by(ApiKey.hashed_under)
                )
            ).all()
        )
        waiting: list[dict[str, str]] = []
        if fallback is not None:
            rows_waiting = await session.execute(
                select(ApiKey.id, ApiKey.client_id, ApiKey.name, Principal.kind, Principal.name)
                .join(Principal, Principal.id == ApiKey.principal_id)
                .where(*live, ApiKey.hashed_under.is_(None) | (ApiKey.hashed_under == fallback))
                .order_by(ApiKey.created_at, ApiKey.id)
            )
            waiting = [
                {"id": id_, "client_id": client_id, "name": name, "owner": f"{kind} {owner}"}
                for id_, client_id, name, kind, owner in rows_waiting.all()
            ]
        # The published ones: what the service decrypts (a key retired longer ago is
        # never read again, and `keyservice prune` deletes it).
        horizon = now - context.keyring.published_after_retirement
        rows = (
            await session.execute(
                select(SigningKey.kid, SigningKey.private_key_encrypted).where(
                    SigningKey.retired_at.is_(None) | (SigningKey.retired_at > horizon)
                )
            )
        ).all()
    under: dict[str, list[str]] = {"current": [], "fallback": [], "unreadable": []}
    for kid, blob in sorted(rows):
        try:
            _, by_fallback = context.keyring.open(kid, blob)
        except WrongSecretError:
            under["unreadable"].append(kid)
        else:
            under["fallback" if by_fallback else "current"].append(kid)
    known = {label, fallback, None}
    return SecretStatus(
        label=label,
        fallback_label=fallback,
        live_keys_current=counts.get(label, 0),
        live_keys_fallback=counts.get(fallback, 0) if fallback is not None else 0,
        live_keys_unlabelled=counts.get(None, 0),
        live_keys_other=sum(n for k, n in counts.items() if k not in known),
        signing_keys_current=under["current"],
        signing_keys_fallback=under["fallback"],
        signing_keys_unreadable=under["unreadable"],
        refresh_lifetime_seconds=context.settings.refresh_token_ttl,
        waiting_keys=waiting,
    )
