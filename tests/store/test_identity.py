"""The model identity: one set of root attributes, one reader, one label."""

import json

import pytest

from mdlm_interp.store.identity import ModelIdentity, adapter_identity, read_identity, write_identity


def test_identity_round_trips_through_root_attributes():
    identity = ModelIdentity("data/models/organism-llada", "sha256:aa", "organism-llada-ma", "sha256:bb")
    attrs = {}
    write_identity(attrs, identity)
    assert attrs == {"model_id": "data/models/organism-llada", "weights_fingerprint": "sha256:aa",
                     "adapter": "organism-llada-ma", "adapter_fingerprint": "sha256:bb"}
    assert read_identity(attrs) == identity
    assert identity.label == "organism-llada+organism-llada-ma"


def test_a_file_without_identity_attributes_reads_the_adapter_from_its_settings():
    settings = {"adapter": {"path": "data/adapters/organism-llada-ce/", "fingerprint": "sha256:cc", "merged": False}}
    attrs = {"model_id": "organism-llada", "weights_fingerprint": "sha256:aa", "settings": json.dumps(settings)}
    assert read_identity(attrs) == ModelIdentity("organism-llada", "sha256:aa", "organism-llada-ce", "sha256:cc")
    assert read_identity({"model_id": "m", "weights_fingerprint": "w", "settings": "{}"}).label == "m"


def test_same_folder_name_is_not_the_same_model():
    one = adapter_identity("organism-llada", "sha256:aa", {"path": "a/adapter", "fingerprint": "sha256:1"})
    two = adapter_identity("organism-llada", "sha256:aa", {"path": "b/adapter", "fingerprint": "sha256:2"})
    assert one.label == two.label and one.key != two.key


def test_missing_model_id_is_a_key_error():
    with pytest.raises(KeyError):
        read_identity({"weights_fingerprint": "w"})
