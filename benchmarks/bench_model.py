"""Model core benchmarks: forward speed against transformers' Llama, peak memory while loading.

    python benchmarks/bench_model.py [--quick]

1. Forward pass of our LLaDA decoder versus transformers' LlamaForCausalLM (bidirectional, via an
   all-True 4-D mask) on the same medium config and the same weights; runs alternate, medians
   are compared (ratio < 1 means we are faster).
2. Peak resident memory of ``load_model`` on a ~1 GB sharded bf16 checkpoint, in a fresh process,
   relative to the checkpoint's size on disk.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def forward_ratio(repeats: int, batch: int, length: int) -> dict:
    """Return median seconds per forward for ours and transformers' Llama, and their ratio."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mdlm_interp import load_model
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint("llada", Path(tmp) / "medium", tokenizer_corpus(), preset="medium", seed=0)
        lm = load_model(path)
    cfg = lm.config
    ref = LlamaForCausalLM(LlamaConfig(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, intermediate_size=cfg.d_mlp, vocab_size=cfg.d_vocab,
        rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=False, attn_implementation="sdpa")).eval()
    ids = torch.randint(0, cfg.d_vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    full = torch.ones(batch, 1, length, length, dtype=torch.bool)
    runs = {"ours": lambda: lm.model(ids), "transformers": lambda: ref(ids, attention_mask=full).logits}
    times = {name: [] for name in runs}
    with torch.no_grad():
        for name, run in runs.items():
            run()  # warm-up
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "config": f"{cfg.n_layers} layers, d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}, "
                  f"batch {batch} x {length} tokens, float32, {torch.get_num_threads()} threads",
        "ours_s": medians["ours"],
        "transformers_s": medians["transformers"],
        "ratio_ours_over_transformers": medians["ours"] / medians["transformers"],
    }


def load_peak(path: str) -> dict:
    """In this (fresh) process: load ``path`` in bf16; return peak RSS growth and checkpoint size in bytes.

    The baseline is taken after a warm-up load of a tiny checkpoint (imports, tokenizer code).
    """
    from mdlm_interp import load_model

    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc/self/status")

    with tempfile.TemporaryDirectory() as tmp:  # warm imports and tokenizer code, so only weights are counted
        from mdlm_interp.models.random_checkpoint import write_random_checkpoint
        from mdlm_interp.tasks import tokenizer_corpus

        load_model(write_random_checkpoint("llada", Path(tmp) / "warm", tokenizer_corpus()))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    start = time.perf_counter()
    lm = load_model(path, dtype="bfloat16")
    seconds = time.perf_counter() - start
    peak = status("VmHWM")
    size = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    params = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    return {"checkpoint_bytes": size, "param_bytes": params, "rss_before": before, "peak_rss": peak,
            "peak_growth_over_size": (peak - before) / size, "load_s": seconds}


def memory_ratio(n_layers: int) -> dict:
    """Write a sharded bf16 checkpoint and measure ``load_peak`` on it in a subprocess."""
    from mdlm_interp.models.random_checkpoint import write_random_checkpoint
    from mdlm_interp.tasks import tokenizer_corpus

    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint(
            "llada", Path(tmp) / "big", tokenizer_corpus(), preset="medium", seed=0, dtype=torch.bfloat16,
            max_shard_bytes=200_000_000, overrides=dict(d_model=2048, n_layers=n_layers, n_heads=16, n_kv_heads=16, d_mlp=5504))
        out = subprocess.run([sys.executable, __file__, "--load-peak", str(path)], capture_output=True, text=True,
                             check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["shards"] = len(list(path.glob("model-*.safetensors")))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a ~0.25 GB checkpoint")
    parser.add_argument("--load-peak", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_peak:
        print(json.dumps(load_peak(args.load_peak)))
        return
    forward = forward_ratio(repeats=3 if args.quick else 10, batch=4, length=512)
    print(f"forward  {forward['config']}")
    print(f"         ours {forward['ours_s'] * 1e3:.1f} ms, transformers Llama {forward['transformers_s'] * 1e3:.1f} ms, "
          f"ratio {forward['ratio_ours_over_transformers']:.3f}")
    memory = memory_ratio(n_layers=2 if args.quick else 10)
    print(f"loading  {memory['checkpoint_bytes'] / 1e9:.2f} GB in {memory['shards']} bf16 shards: peak RSS growth "
          f"{(memory['peak_rss'] - memory['rss_before']) / 1e9:.2f} GB = {memory['peak_growth_over_size']:.2f}x the "
          f"checkpoint, {memory['load_s']:.1f} s")


if __name__ == "__main__":
    main()
