"""generate --trace never replaces a trace another run wrote meanwhile (without --overwrite)."""

from cli_run import run_cli


def test_a_trace_written_by_a_concurrent_run_is_kept(tiny_checkpoint, tmp_path, monkeypatch):
    import mdlm_interp.decoding.text as text

    trace = tmp_path / "trace.h5"
    real = text.generate_text

    def concurrent(*args, **kwargs):
        trace.write_bytes(b"the first run's trace")  # another generate finished while this one decoded
        return real(*args, **kwargs)

    monkeypatch.setattr(text, "generate_text", concurrent)
    result = run_cli("generate", "--model", tiny_checkpoint("llada"), "--prompt", " big", "--gen-length", "2",
                     "--trace", trace)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{trace} exists; pass --overwrite" in result.stderr
    assert trace.read_bytes() == b"the first run's trace"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trace.h5"]  # no partial file left
