"""``mdlm-interp model init|info``: write tiny random checkpoints and describe checkpoints."""


def add_parser(subparsers) -> None:
    """Register ``model init`` and ``model info``."""
    from mdlm_interp.cli.adapters import add_adapter_flags
    from mdlm_interp.models.families import DTYPE_NAMES, FAMILIES, SHAPE_PRESETS

    parser = subparsers.add_parser("model", help="write tiny random checkpoints; describe a checkpoint")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init",
        help="write a random checkpoint directory with the family's real config fields and parameter names",
        description="Write a complete Hugging Face style checkpoint (config.json, safetensors, tokenizer) "
        "with random weights, for tests and benchmarks.",
    )
    init.add_argument("--family", required=True, choices=list(FAMILIES), help="model family")
    init.add_argument("--preset", default="tiny", choices=list(SHAPE_PRESETS),
                      help="shape preset: tiny (tests), medium (benchmarks) or organism (the trained organisms' shape)")
    init.add_argument("--seed", type=int, default=0, help="seed of the random weights (same seed, same files)")
    init.add_argument("--dtype", default="float32", choices=list(DTYPE_NAMES),
                      help="dtype of the stored weights")
    init.add_argument("--shard-mb", type=float, default=None,
                      help="split the weights into shards of at most this many MB (with an index file)")
    init.add_argument("--out", required=True, help="output directory (created if missing; an existing non-empty "
                      "one needs --overwrite)")
    init.add_argument("--overwrite", action="store_true",
                      help="replace an existing checkpoint directory (only once the new one is complete)")
    init.set_defaults(func=run_init)

    info = actions.add_parser("info", help="print family, shapes, parameter count and special token ids")
    info.add_argument("model", help="checkpoint directory, organism-NAME, or hub id in the local cache")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_adapter_flags(info)
    info.set_defaults(func=run_info)


def run_init(args) -> int:
    """Handle ``model init``."""
    from mdlm_interp.errors import UsageError
    from mdlm_interp.models.loader import parse_dtype
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.outputs import check_output_dir, staged_dir
    from mdlm_interp.tasks import tokenizer_corpus

    if args.shard_mb is not None and not 0 < args.shard_mb < float("inf"):
        raise UsageError(f"--shard-mb must be a positive number of MB, got {args.shard_mb}")
    check_output_dir(args.out, overwrite=args.overwrite)
    shard = None if args.shard_mb is None else max(1, int(args.shard_mb * 1e6))
    with staged_dir(args.out) as staging:  # the old folder is replaced only by a complete checkpoint
        write_random_checkpoint(args.family, staging, tokenizer_corpus(), args.preset, args.seed,
                                parse_dtype(args.dtype), shard)
    print(f"wrote {args.family} {args.preset} checkpoint to {args.out}")
    return 0


def describe(lm) -> dict:
    """Return a JSON-ready description of a loaded model: family, shapes, parameter count, special ids."""
    from dataclasses import asdict

    specials = {role: {"token": token, "id": lm.tokenizer.convert_tokens_to_ids(token)}
                for role, token in lm.spec.special_tokens.items()}
    return {
        "source": lm.source,
        "path": str(lm.path),
        "family": lm.spec.family,
        "causal": lm.spec.causal,
        "attention": lm.spec.attention,
        "prediction_offset": lm.spec.prediction_offset,
        "moe": moe_facts(lm.config),
        "mask_token_id": lm.mask_token_id,
        "n_params": sum(p.numel() for p in lm.model.parameters()),
        "config": asdict(lm.config),
        "special_tokens": specials,
        "adapter": lm.adapter.facts() if lm.adapter else None,
    }


def moe_facts(cfg) -> dict | None:
    """Return the mixture-of-experts facts of a decoder config (None for a dense model)."""
    if not cfg.n_experts:
        return None
    return {"experts": cfg.n_experts, "per_token": cfg.n_experts_per_tok, "expert_width": cfg.d_expert,
            "shared_width": cfg.d_shared, "moe_layers": list(cfg.moe_layers), "router": cfg.router,
            "expert_bias": cfg.router_bias, "groups": [cfg.n_group, cfg.topk_group],
            "routed_scaling_factor": cfg.routed_scaling_factor}


def run_info(args) -> int:
    """Handle ``model info``."""
    import json

    from mdlm_interp.models.loader import load_model

    from mdlm_interp.cli.adapters import adapter_options

    info = describe(load_model(args.model, **adapter_options(args)))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"{info['source']}  ({info['path']})")
    print(f"family              {info['family']} ({info['attention']} attention, "
          f"prediction offset {info['prediction_offset']})")
    print(f"parameters        {info['n_params']:,}")
    print(f"shape             {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads "
          f"({cfg['n_kv_heads']} kv) x {cfg['d_head']}, d_mlp {cfg['d_mlp']}, vocab {cfg['d_vocab']}")
    print(f"rope              theta {cfg['rope_theta']:g}, norm eps {cfg['norm_eps']:g}, qkv bias {cfg['qkv_bias']}, "
          f"max length {cfg['max_seq_len']}")
    if cfg["qk_norm"] or cfg["partial_rotary_factor"] != 1:
        print(f"attention extras  QK norm {cfg['qk_norm']}, rotary dims {int(cfg['d_head'] * cfg['partial_rotary_factor'])}"
              f" of {cfg['d_head']}, output bias {cfg['o_bias']}")
    if info["moe"]:
        moe = info["moe"]
        print(f"experts           {moe['experts']} routed (top {moe['per_token']}, {moe['router']} router, groups "
              f"{moe['groups'][1]} of {moe['groups'][0]}, scale {moe['routed_scaling_factor']:g}), width "
              f"{moe['expert_width']}, shared width {moe['shared_width']}, MoE layers {moe['moe_layers']}")
    for role, special in info["special_tokens"].items():
        print(f"{role + ' token':<20}{special['token']} = {special['id']}")
    if info["adapter"]:
        adapter = info["adapter"]
        print(f"adapter           {adapter['path']} ({adapter['fingerprint']}{', merged' if adapter['merged'] else ''})")
    return 0
