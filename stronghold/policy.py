"""The admin's policy (``Policy``: what turns findings into actions) and the SMTP
replies the precedence and routing tables answer with."""

from __future__ import annotations

from dataclasses import dataclass

from stronghold.config import Config
from stronghold.verdict import Action

REPLY_VIRUS = ("554", "5.7.0", "Message contains a virus: {name}")
REPLY_SPAM = ("550", "5.7.1", "Message rejected as spam")
REPLY_BLOCKED = ("550", "5.7.1", "Sender is blocked")  # whose list is not the sender's business
REPLY_TEMPFAIL = ("451", "4.7.1", "Temporary filtering failure, please try again later")
REPLY_OVERSIZE = ("552", "5.3.4", "Message too big for the filter")
REPLY_UNCHECKED = ("550", "5.7.1", "Message could not be checked")


@dataclass(frozen=True)
class Policy:
    """The admin's choices that turn findings into actions."""

    spam_threshold: float | None = None  # None: the model's own threshold
    reject_threshold: float = 0.999
    spam_action: Action = Action.TAG
    spam_action_high: Action = Action.TAG
    virus_action: Action = Action.REJECT
    subject_prefix: str = "[SPAM]"
    on_scanner_error: str = "tempfail"
    on_model_error: str = "tempfail"
    on_store_error: str = "tempfail"
    oversize_action: str = "reject"
    dmarc_action: Action = Action.TAG
    on_dns_error: str = "unauthenticated"

    @classmethod
    def from_config(cls, cfg: Config) -> Policy:
        return cls(
            spam_threshold=cfg.spam_threshold,
            reject_threshold=cfg.reject_threshold,
            spam_action=Action(cfg.spam_action),
            spam_action_high=Action(cfg.spam_action_high),
            virus_action=Action(cfg.virus_action),
            subject_prefix=cfg.subject_prefix,
            on_scanner_error=cfg.on_scanner_error,
            on_model_error=cfg.on_model_error,
            on_store_error=cfg.on_store_error,
            oversize_action=cfg.oversize_action,
            dmarc_action=Action(cfg.dmarc_action),
            on_dns_error=cfg.on_dns_error,
        )
