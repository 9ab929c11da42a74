"""What to tell someone who just allowed a sender from one message: whether the entry will work.

Allow entries apply only to an authenticated sender (``stronghold.allowrule``) unless
marked "trust without authentication"; the message's own trace says whether its sender
was, so the flash need not promise what the next message will not get.
"""

from __future__ import annotations

from webui.tracetext import sender_authenticated

NOT_AUTHENTICATED = ("It applies only when the sender is authenticated (SPF/DKIM), which this message was not: "
                     "mail like it will still be filtered. To trust it anyway, mark the entry "
                     "“trust without authentication” on your lists page.")
NOT_CHECKED = ("It applies only when the sender is authenticated (SPF/DKIM); whether this message's "
               "sender was is not known.")


def allow_note(trace: str | None, source: str, address: str) -> tuple[str, str]:
    """(the sentence to add after "… is now on the allow list", the flash category)."""
    known = sender_authenticated(trace, source, address) if trace is not None else None
    if known is False:
        return NOT_AUTHENTICATED, "warning"
    if known is None:
        return NOT_CHECKED, "message"
    return "", "message"
