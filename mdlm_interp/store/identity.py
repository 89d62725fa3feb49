"""The model identity every output file carries: which weights, which adapter.

Every writer (record, patch, ablate, decode traces and the kinds to come) writes the four root
attributes ``model_id``, ``weights_fingerprint``, ``adapter`` and ``adapter_fingerprint`` (the last
two empty strings without an adapter) with ``write_identity``; every reader gets them back with
``read_identity``. Files written before the identity attributes existed keep the adapter inside the
``settings`` JSON; ``read_identity`` reads it from there. Two files are of the same model exactly
when their ``ModelIdentity.key`` is equal; ``label`` is what tables and figures print.
"""

import json
from dataclasses import dataclass
from pathlib import Path

IDENTITY_ATTRS = ("model_id", "weights_fingerprint", "adapter", "adapter_fingerprint")


@dataclass(frozen=True)
class ModelIdentity:
    """The model a file was made with: model id, weights fingerprint, adapter name and fingerprint ("" if none)."""

    model_id: str
    weights_fingerprint: str
    adapter: str = ""
    adapter_fingerprint: str = ""

    @property
    def key(self) -> tuple[str, str]:
        """Return (weights fingerprint, adapter fingerprint): equal exactly for the same computation."""
        return self.weights_fingerprint, self.adapter_fingerprint

    @property
    def label(self) -> str:
        """Return a short label: the model id's last path component, "+ADAPTER" with an adapter
        ("organism-llada", "LLaDA-8B-Instruct", "organism-llada+organism-llada-ma")."""
        name = Path(str(self.model_id).rstrip("/")).name or str(self.model_id)
        return f"{name}+{self.adapter}" if self.adapter else name

    def attrs(self) -> dict[str, str]:
        """Return the four root attributes, as strings."""
        return {name: str(getattr(self, name)) for name in IDENTITY_ATTRS}


def adapter_identity(model_id: str, weights_fingerprint: str, adapter: dict | None) -> ModelIdentity:
    """Return the identity of weights plus an adapter given as ``{"path", "fingerprint", ...}`` (or None)."""
    if not adapter:
        return ModelIdentity(str(model_id), str(weights_fingerprint))
    return ModelIdentity(str(model_id), str(weights_fingerprint), Path(str(adapter["path"]).rstrip("/")).name,
                         str(adapter["fingerprint"]))


def write_identity(attrs, identity: ModelIdentity) -> None:
    """Write the identity's four root attributes into ``attrs`` (an h5py AttributeManager or a dict)."""
    for name, value in identity.attrs().items():
        attrs[name] = value


def read_identity(attrs) -> ModelIdentity:
    """Return the identity stored in root attributes ``attrs`` (decoded values or raw h5py attributes).

    Without the ``adapter`` attributes (files written before them), the adapter is read from the
    ``settings`` JSON. Raises KeyError if ``model_id`` or ``weights_fingerprint`` is missing.
    """
    def text(name):
        value = attrs[name]
        return value.decode() if isinstance(value, bytes) else str(value)

    model_id, weights = text("model_id"), text("weights_fingerprint")
    if "adapter" in attrs:
        return ModelIdentity(model_id, weights, text("adapter"), text("adapter_fingerprint"))
    settings = attrs.get("settings", {})
    if isinstance(settings, (str, bytes)):
        settings = json.loads(settings)
    return adapter_identity(model_id, weights, settings.get("adapter") if isinstance(settings, dict) else None)
