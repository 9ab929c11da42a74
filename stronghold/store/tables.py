"""SQLAlchemy tables of the store (the migration in stronghold/migrations creates them)."""

from __future__ import annotations

import time

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

GLOBAL = ""  # owner of the global (admin) lists


class Base(DeclarativeBase):
    """The declarative base of every table of the store."""


class User(Base):
    """A web UI account; ``role`` is 'user' or 'admin'."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    login: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(10), default="user")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    digest: Mapped[str] = mapped_column(String(10), default="daily")  # off / daily / weekly
    digest_sent: Mapped[float | None] = mapped_column(Float, nullable=True)  # last digest covered up to
    spam_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)  # own; None: the system's
    addresses: Mapped[list[Address]] = relationship(back_populates="user", cascade="all, delete-orphan",
                                                    order_by="Address.address")

    @property
    def is_admin(self) -> bool:
        """Whether the user may see and manage everyone's mail and lists."""
        return self.role == "admin"


class Address(Base):
    """An address a user owns (one owner at a time; ``since``: from when its mail is theirs)."""

    __tablename__ = "addresses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    # mail before this time belongs to a previous owner of the address (0: no previous owner)
    since: Mapped[float] = mapped_column(Float, default=0.0)
    user: Mapped[User] = relationship(back_populates="addresses")


class ReleasedAddress(Base):
    """When an address last left its owner (deleted user or released), so the next owner starts fresh."""

    __tablename__ = "released_addresses"
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    released: Mapped[float] = mapped_column(Float)


class WebSession(Base):
    """A web login; the cookie holds a random id whose SHA-256 is ``id``. Deleting the row ends it."""

    __tablename__ = "web_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float] = mapped_column(Float, index=True)


class RateLimit(Base):
    """Fixed-window counters of the web UI's rate limits, shared by every web node."""

    __tablename__ = "rate_limits"
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    expires: Mapped[float] = mapped_column(Float, index=True)


class SiteKey(Base):
    """A key every node shares (``sitekeys``): the web UI's secret key, made by the first node needing it."""

    __tablename__ = "site_keys"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created: Mapped[float] = mapped_column(Float, default=time.time)


class ListEntryRow(Base):
    """An allow or block entry: ``owner`` an address, or GLOBAL for the admins' lists."""

    __tablename__ = "list_entries"
    __table_args__ = (UniqueConstraint("owner", "kind", "pattern", name="uq_list_entry"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(320), index=True)  # address, or GLOBAL
    kind: Mapped[str] = mapped_column(String(5))
    pattern: Mapped[str] = mapped_column(String(320))
    comment: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[float] = mapped_column(Float, default=time.time)
    # allow entries: match even an unauthenticated sender (for senders that cannot sign)
    trust_unauthenticated: Mapped[bool] = mapped_column(Boolean, default=False)


class MessageRow(Base):
    """The message log: one row per message the filter decided (``messagelog``)."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    queue_id: Mapped[str] = mapped_column(String(40), default="")
    client_ip: Mapped[str] = mapped_column(String(64), default="")
    sender: Mapped[str] = mapped_column(String(320), default="")
    header_from: Mapped[str] = mapped_column(String(320), default="")
    subject: Mapped[str] = mapped_column(String(200), default="")
    size: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    category: Mapped[str] = mapped_column(String(10))
    action: Mapped[str] = mapped_column(String(10))
    virus: Mapped[str] = mapped_column(String(200), default="")
    reasons: Mapped[str] = mapped_column(Text, default="")
    trace: Mapped[str] = mapped_column(Text, default="")
    tokens: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    recipients: Mapped[list[MessageRecipient]] = relationship(back_populates="message",
                                                              cascade="all, delete-orphan")


class MessageRecipient(Base):
    """One recipient of a logged message and what the filter did for it."""

    __tablename__ = "message_recipients"
    __table_args__ = (Index("ix_message_recipients_address_msg", "address", "message_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320))
    category: Mapped[str] = mapped_column(String(10))
    action: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(200), default="")
    message: Mapped[MessageRow] = relationship(back_populates="recipients")


class Feedback(Base):
    """A user's spam/not-spam mark on a logged message; ``applied``: when training took it in."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("message_id", "user_id", name="uq_feedback"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    is_spam: Mapped[bool] = mapped_column(Boolean)
    created: Mapped[float] = mapped_column(Float, default=time.time)
    applied: Mapped[float | None] = mapped_column(Float, nullable=True)


class Meta(Base):
    """Small counters; 'lists_version' changes whenever any list changes."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class QuarantineBlob(Base):
    """A held message's bytes, zlib-compressed, once per distinct content (SHA-256 of the raw bytes)."""

    __tablename__ = "quarantine_blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)  # raw (uncompressed) bytes
    data: Mapped[bytes] = mapped_column(LargeBinary)
    touched: Mapped[float] = mapped_column(Float, default=time.time)  # last hold() that used it


class QuarantineItem(Base):
    """One held copy for one recipient; ``released`` is claimed atomically (see store.quarantine)."""

    __tablename__ = "quarantine_items"
    __table_args__ = (Index("ix_quarantine_items_recipient_ts", "recipient", "ts"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    sender: Mapped[str] = mapped_column(String(320), default="")
    # The header From as received; NULL only until migration 0009 fills it for items held before 0008.
    header_from: Mapped[str | None] = mapped_column(String(320), nullable=True)
    subject: Mapped[str] = mapped_column(String(200), default="")
    queue_id: Mapped[str] = mapped_column(String(40), default="")
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    category: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(String(200), default="")
    trace: Mapped[str] = mapped_column(Text, default="")
    virus: Mapped[str | None] = mapped_column(String(200), nullable=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str] = mapped_column(ForeignKey("quarantine_blobs.sha256"), index=True)
    released: Mapped[float | None] = mapped_column(Float, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    delivered: Mapped[float | None] = mapped_column(Float, nullable=True)  # the release's SMTP 250


class LearnedMessage(Base):
    """The learning ledger: one row per message (and scope) that feedback taught the model.

    ``content_hash`` is the SHA-256 of the message's features as the milter sees them (see
    stronghold.learning.content_hash); ``scope`` is "" for the shared model, else the user whose
    personal layer it trains.  ``label`` is what the ledger wants (None: forgotten, still to be
    taken out); ``applied`` what the model's counts hold now.  ``set_aside``: a model rollback
    took the mark out of the shared model, which keeps ``applied`` for it (what the restored model
    held) until an operator readmits or forgets it; personal layers still use ``label``.
    """

    __tablename__ = "learned_messages"
    __table_args__ = (UniqueConstraint("content_hash", "scope", name="uq_learned_message"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(320), default="", index=True)
    label: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # True: spam
    applied: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    set_aside: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(10))  # cli / web / imap / junk
    who: Mapped[str] = mapped_column(String(320), default="")
    created: Mapped[float] = mapped_column(Float, default=time.time)
    updated: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    tokens: Mapped[bytes] = mapped_column(LargeBinary)


class ModelEvent(Base):
    """What happened to the shared model: candidate built, promoted, held back, rolled back (and why)."""

    __tablename__ = "model_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ts: Mapped[float] = mapped_column(Float, default=time.time, index=True)
    action: Mapped[str] = mapped_column(String(20))
    version: Mapped[str] = mapped_column(String(64))  # table SHA-256 of the model concerned
    who: Mapped[str] = mapped_column(String(320), default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class ModelVersion(Base):
    """A published model: the scoring table (zlib-compressed .npy bytes) and passport every node reads."""

    __tablename__ = "model_versions"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the .npy file
    published: Mapped[float] = mapped_column(Float, default=time.time)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    passport: Mapped[str] = mapped_column(Text)
    table: Mapped[bytes] = mapped_column(LargeBinary)


class ModelNode(Base):
    """Which model version each milter node runs, as it last reported."""

    __tablename__ = "model_nodes"
    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), default="")
    seen: Mapped[float] = mapped_column(Float, default=time.time)
    error: Mapped[str] = mapped_column(String(300), default="")


class PersonalLayerRow(Base):
    """A user's personal layer (stronghold.personal): buckets and values, built where the model learns."""

    __tablename__ = "personal_layers"
    scope: Mapped[str] = mapped_column(String(320), primary_key=True)  # a user's login, or an address
    updated: Mapped[float] = mapped_column(Float, default=time.time)
    messages: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[bytes] = mapped_column(LargeBinary)
