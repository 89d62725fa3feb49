"""Hugging Face style checkpoint directories: resolve, read strictly from safetensors, write.

A checkpoint is a directory with config.json, model.safetensors (or shards plus
model.safetensors.index.json) and tokenizer files. Weights are read tensor by tensor into a model
built on the meta device, so a large checkpoint is never held twice. Never pickle.
"""

import hashlib
import json
import os
import re
from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from mdlm_interp.errors import UsageError
from mdlm_interp.models.families import FamilySpec
from mdlm_interp.models.transformer import DecoderConfig, HookedDecoder
from mdlm_interp.paths import data_dir

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tensors some checkpoints carry that hold no weights (recomputed from the config).
IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")

def resolve_checkpoint(name: str | os.PathLike) -> Path:
    """Return the local directory of a checkpoint given a path, ``organism-NAME`` or a hub id.

    Hub ids are looked up in the local Hugging Face cache first; the hub is asked only when
    ``HF_HUB_OFFLINE`` is not set. Anything that cannot be found is a one-line ``UsageError``.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UsageError(f"{path}: not a checkpoint directory (no config.json)")
        return path
    if path.exists():
        raise UsageError(f"{path}: expected a checkpoint directory, got a file")
    if text.startswith("organism-"):
        organism = data_dir() / "models" / text
        if organism.is_dir():
            return resolve_checkpoint(organism)
        raise UsageError(f"unknown model organism '{text}' (looked in {organism.parent})")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", text):
        raise UsageError(f"no checkpoint directory '{text}' and it is not a hub id (owner/name)")
    return Path(download_from_hub(text))


def download_from_hub(repo_id: str) -> str:
    """Return the local snapshot directory of ``repo_id``: the cache first, then the hub if online."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
    try:
        return snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns)
    except Exception:
        pass
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise UsageError(f"model '{repo_id}' is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"model '{repo_id}' is not cached and the hub could not be reached: {reason}") from error


def read_config(path: Path) -> dict:
    """Return the parsed config.json of a checkpoint directory."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{path}/config.json: cannot read it: {error}") from error
    if not isinstance(config, dict):
        raise UsageError(f"{path}/config.json: expected a JSON object, got {type(config).__name__}")
    return config


def tensor_files(path: Path) -> dict[str, Path]:
    """Return checkpoint tensor name -> safetensors file holding it (sharded or single file)."""
    from safetensors import safe_open

    path = Path(path)
    if (path / INDEX_FILE).exists():
        try:
            weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise UsageError(f"{path / INDEX_FILE}: not a valid safetensors index ({error})") from error
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.exists():
                raise UsageError(f"{path}: shard {shard.name} listed in {INDEX_FILE} is missing")
        return files
    if (path / SINGLE_FILE).exists():
        with open_safetensors(path / SINGLE_FILE, safe_open) as handle:
            return {name: path / SINGLE_FILE for name in handle.keys()}
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise UsageError(f"{path}: only pickle weights found; safetensors are required")
    raise UsageError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")


def open_safetensors(file: Path, safe_open):
    """Open a safetensors file, turning a corrupt or truncated file into a one-line error."""
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as error:
        raise UsageError(f"{file}: corrupted safetensors file ({str(error).splitlines()[0]})") from error


def expected_tensors(model: HookedDecoder, spec: FamilySpec) -> dict[str, list[str]]:
    """Return checkpoint tensor name -> our parameter names for every weight the model needs (one name,
    or several whose tensors the checkpoint stores concatenated along dim 0, e.g. LLaDA2's q/k/v)."""
    expected: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():  # tied weights are listed once
        expected.setdefault(spec.checkpoint_name(name), []).append(name)
    return expected


def fused_shape(parameters: dict, names: list[str]) -> tuple[int, ...]:
    """Return the checkpoint shape of our parameters ``names`` stored as one tensor (concatenated on dim 0)."""
    shapes = [tuple(parameters[name].shape) for name in names]
    return (sum(shape[0] for shape in shapes), *shapes[0][1:])


def load_weights(model: HookedDecoder, path: Path, spec: FamilySpec, dtype: torch.dtype, device) -> None:
    """Fill ``model`` (built on the meta device) from the checkpoint's safetensors, strictly.

    Every missing, unexpected or mis-shaped tensor is reported by name before anything is read.
    Tensors are read one at a time and converted to ``dtype`` on ``device``.
    """
    from safetensors import safe_open

    expected = expected_tensors(model, spec)
    files = tensor_files(path)
    missing = sorted(set(expected) - set(files))
    tied_head = {spec.checkpoint_name("unembed.weight")} if model.cfg.tie_embeddings else set()
    unexpected = sorted(n for n in set(files) - set(expected) - tied_head if not IGNORED_TENSORS.match(n))
    if missing:
        raise UsageError(f"{path}: checkpoint is missing {len(missing)} tensor(s), e.g. {missing[0]}")
    if unexpected:
        raise UsageError(f"{path}: checkpoint has {len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    parameters = dict(model.named_parameters())
    by_file: dict[Path, list[str]] = {}
    for name in expected:
        by_file.setdefault(files[name], []).append(name)
    for file, names in by_file.items():
        with open_safetensors(file, safe_open) as handle:
            for name in names:
                shape, wanted = tuple(handle.get_slice(name).get_shape()), fused_shape(parameters, expected[name])
                if shape != wanted:
                    raise UsageError(f"{file.name}: tensor {name} has shape {list(shape)}, expected {list(wanted)}")
        for name, tensor in read_tensors(file, names):
            ours = expected[name]
            parts = tensor.split([parameters[part].shape[0] for part in ours]) if len(ours) > 1 else [tensor]
            for part, value in zip(ours, parts):
                set_parameter(model, part, value.to(device=device, dtype=dtype))
    if model.cfg.tie_embeddings:
        model.unembed.weight = model.embed.weight


STORED_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_tensors(file: Path, names: list[str]):
    """Yield (name, tensor) for ``names`` of a safetensors file, each read straight into its own buffer.

    The file is read with ``readinto`` rather than memory-mapped: mapped pages count as resident
    memory, which would hold every weight twice while a shard is open. The header was validated by
    ``safetensors.safe_open`` before this runs.
    """
    with open(file, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_size))
        for name in names:
            info = header[name]
            if info["dtype"] not in STORED_DTYPES:
                raise UsageError(f"{file.name}: tensor {name} has unsupported dtype {info['dtype']}")
            tensor = torch.empty(info["shape"], dtype=STORED_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            handle.seek(8 + header_size + begin)
            if handle.readinto(tensor.reshape(-1).view(torch.uint8).numpy()) != end - begin:
                raise UsageError(f"{file}: corrupted safetensors file (tensor {name} is truncated)")
            yield name, tensor


def set_parameter(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter ``name`` of ``model`` by ``tensor``, without copying it."""
    module_name, _, attribute = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[attribute] = nn.Parameter(tensor, requires_grad=False)


FULL_HASH_LIMIT = 1 << 30  # bytes; larger checkpoints are fingerprinted from samples
SAMPLES_PER_FILE = 64
SAMPLE_BYTES = 1 << 20


def weights_fingerprint(path: Path) -> str:
    """Return a fingerprint of the checkpoint's safetensors files: "sha256:<hex>" over every byte, or
    for checkpoints above 1 GiB "sampled-sha256:<hex>" over each file's name, size, header and 64
    evenly spaced 1 MiB samples (hashing 16 GB would take a minute)."""
    files = sorted(set(tensor_files(path).values()))
    sampled = sum(f.stat().st_size for f in files) > FULL_HASH_LIMIT
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            if not sampled:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
                continue
            header_size = int.from_bytes(handle.read(8), "little")
            digest.update(handle.read(header_size))
            for i in range(SAMPLES_PER_FILE):
                handle.seek(i * max(size - SAMPLE_BYTES, 0) // (SAMPLES_PER_FILE - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return ("sampled-sha256:" if sampled else "sha256:") + digest.hexdigest()


def save_weights(model: HookedDecoder, spec: FamilySpec, out_dir: Path, dtype: torch.dtype, max_shard_bytes: int | None = None) -> None:
    """Write the model's weights under the family's checkpoint names as safetensors.

    With ``max_shard_bytes`` the weights are split into shards plus model.safetensors.index.json.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    parameters = dict(model.named_parameters())
    tensors = {
        name: torch.cat([parameters[part].detach() for part in ours]).to(dtype).contiguous()
        for name, ours in expected_tensors(model, spec).items()
    }
    out_dir = Path(out_dir)
    if max_shard_bytes is None:
        save_file(tensors, str(out_dir / SINGLE_FILE), metadata={"format": "pt"})
        return
    split = split_torch_state_dict_into_shards(
        tensors, max_shard_size=max_shard_bytes, filename_pattern="model{suffix}.safetensors"
    )
    for filename, names in split.filename_to_tensors.items():
        save_file({n: tensors[n] for n in names}, str(out_dir / filename), metadata={"format": "pt"})
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": split.tensor_to_filename}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def config_json(spec: FamilySpec, cfg: DecoderConfig, special_ids: dict[str, int], dtype: torch.dtype) -> dict:
    """Return a config.json for ``cfg`` with the family's REAL field names and special-token ids."""
    values = {item.name: getattr(cfg, item.name) for item in fields(cfg)}
    values["d_shared"] = cfg.d_shared or None  # LLaDA-MoE: null when there is no shared expert
    values["n_shared_experts"] = cfg.d_shared // cfg.d_expert if cfg.d_expert else 0
    values["n_dense_layers"] = cfg.n_layers - len(cfg.moe_layers)  # the first layers (first_k_dense_replace)
    config = {"architectures": [spec.architecture], "model_type": spec.model_types[0]}
    for field, keys in spec.config_keys.items():
        for key in keys:
            config[key] = values[field]
    if spec.moe_layers_key == "moe_layer_freq":
        config["moe_layer_freq"] = [int(layer in cfg.moe_layers) for layer in range(cfg.n_layers)]
    config.update(spec.fixed_config)
    config.update(spec.extra_config)
    for role, key in spec.special_id_keys.items():
        config[key] = special_ids[spec.special_tokens[role]]
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return config
