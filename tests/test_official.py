"""OpenAI's released circuit_sparsity layout in and out (`sparse_tf.official`), without the
network: the tests write checkpoints in the official layout themselves, key by key as the
official code names them."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import tokenizers
import torch

from sparse_tf import GPT, GPTConfig, load_model, load_tokenizer, official
from sparse_tf.config import ConfigError
from sparse_tf.data.tokenizer import PRETOKENIZE_PATTERN, tinypython_bpe
from sparse_tf.pruning import Circuit, CircuitError, load_circuit
from sparse_tf.pruning.circuit_data import read_viz_data
from sparse_tf.sites import ABSTOPK_SITES
from tests.helpers import tokens

# sparse_tf name inside blocks.{i} -> official name inside transformer.h.{i}
OFFICIAL_LAYER_KEYS = {
    "ln1.weight": "ln_1.weight",
    "ln2.weight": "ln_2.weight",
    "attn.qkv.weight": "attn.c_attn.weight",
    "attn.qkv.bias": "attn.c_attn.bias",
    "attn.out_proj.weight": "attn.c_proj.weight",
    "attn.out_proj.bias": "attn.c_proj.bias",
    "attn.sink_logit": "attn.attn_imp.sink_logit",
    "mlp.in_proj.weight": "mlp.c_fc.weight",
    "mlp.in_proj.bias": "mlp.c_fc.bias",
    "mlp.out_proj.weight": "mlp.c_proj.weight",
    "mlp.out_proj.bias": "mlp.c_proj.bias",
}


def source_model(**overrides: object) -> GPT:
    """A random model with explicit zeros in every matrix (as the released weights have)."""
    torch.manual_seed(0)
    fields = dict(vocab_size=64, n_ctx=16, n_layer=2, d_model=32, d_head=8, attn_sink=True)
    model = GPT(GPTConfig(**{**fields, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) < 0.3)
    return model.eval()


def write_official(model: GPT, folder: Path, config: dict | None = None) -> Path:
    """`model` in the released layout, written by hand: the official key names, a config with
    the old `n_mlp`, an internal key the public config lacks, zero positions if the model has
    none, a zero final_logits_bias."""
    cfg = model.cfg
    params = dict(model.named_parameters())
    state = {
        "transformer.wte.weight": params["embed.weight"],
        "transformer.ln_f.weight": params["ln_final.weight"],
        "lm_head.weight": params["unembed.weight"],
        "transformer.wpe.weight": (
            params["pos_embed.weight"] if cfg.pos_emb else torch.zeros(cfg.n_ctx, cfg.d_model)
        ),
        "final_logits_bias": torch.zeros(cfg.vocab_size),
    }
    if cfg.bigram:
        state["bigram_table"] = params["bigram"]
    for i in range(cfg.n_layer):
        for ours, theirs in OFFICIAL_LAYER_KEYS.items():
            if f"blocks.{i}.{ours}" in params:
                state[f"transformer.h.{i}.{theirs}"] = params[f"blocks.{i}.{ours}"]
    state = {k: v.detach().clone() for k, v in state.items()}
    beeg = {
        "block_size": cfg.n_ctx, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
        "n_head": cfg.n_head, "d_head": cfg.d_head, "d_model": cfg.d_model, "dropout": 0.0,
        "bias": True, "ln_bias": True, "rms_norm": True, "residual_activation_type": "identity",
        "activation_type": "gelu", "afrac": cfg.afrac, "afrac_loctypes": ",".join(cfg.afrac_sites),
        "tied_unembed": False, "tokenizer_name": "tinypython_2k", "grad_checkpointing": True,
        "n_mlp": cfg.d_mlp, "enable_bigram_table": cfg.bigram, "learnable_bigram_table": True,
        "d_pos_emb": None, "flash": True, "sink": cfg.attn_sink,
        "pfrac": 0.0625,  # an internal key of the released configs
    }  # fmt: skip
    beeg.update(config or {})
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "final_model.pt")
    (folder / "beeg_config.json").write_text(json.dumps(beeg))
    return folder


@pytest.mark.parametrize("pos_emb", [False, True])
def test_a_released_layout_loads_with_the_same_logits(
    tmp_path: Path, pos_emb: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    source = source_model(pos_emb=pos_emb)
    folder = write_official(source, tmp_path / "csp")
    model = load_model(folder)
    assert "pfrac" in capsys.readouterr().err  # the ignored key is named, once
    assert model.cfg.pos_emb == pos_emb  # a zero table is no table
    assert model.cfg.afrac_sites == ABSTOPK_SITES
    x = tokens(source.cfg, batch=2, seq=12)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_the_official_default_sites_and_a_tied_unembedding(tmp_path: Path) -> None:
    """A config without afrac_loctypes has AbsTopK at the official default's four sites; a
    tied unembedding (only wte saved) is the embedding."""
    four = ("attn_in", "attn_out", "mlp_in", "mlp_out")
    source = source_model(afrac_sites=four)
    with torch.no_grad():
        source.unembed.weight.copy_(source.embed.weight)
    folder = write_official(source, tmp_path / "csp", {"tied_unembed": True})
    beeg = json.loads((folder / "beeg_config.json").read_text())
    del beeg["afrac_loctypes"]
    (folder / "beeg_config.json").write_text(json.dumps(beeg))
    state = torch.load(folder / "final_model.pt", weights_only=True)
    del state["lm_head.weight"]
    torch.save(state, folder / "final_model.pt")
    model = load_model(folder)
    assert model.cfg.afrac_sites == four
    x = tokens(source.cfg, batch=2, seq=12)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
        every_site = GPT(
            GPTConfig.from_dict({**source.cfg.to_dict(), "afrac_sites": ABSTOPK_SITES})
        )
        every_site.load_state_dict(source.state_dict())
        assert not torch.equal(every_site.eval()(x), source(x))  # the sites matter


def test_out_and_back_in_is_the_identity(tmp_path: Path) -> None:
    source = source_model(pos_emb=True)
    official.save(source, tmp_path / "out")
    back = official.load(tmp_path / "out")
    assert back.cfg == source.cfg
    for (name, p), q in zip(source.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    official.save(back, tmp_path / "again")
    first = torch.load(tmp_path / "out" / "final_model.pt", weights_only=True)
    second = torch.load(tmp_path / "again" / "final_model.pt", weights_only=True)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    configs = [
        json.loads((tmp_path / d / "beeg_config.json").read_text()) for d in ("out", "again")
    ]
    assert configs[0] == configs[1]


def test_a_table_longer_than_the_context_converts_out_and_in(tmp_path: Path) -> None:
    """A model whose positional table has more rows than its n_ctx (paper-official's 1024 at
    256) is written with block_size = its rows and reads back at n_ctx = block_size: the same
    weights and logits; out again, the same files."""
    source = source_model(pos_emb=True, pos_rows=40)  # n_ctx 16
    official.save(source, tmp_path / "out")
    beeg = json.loads((tmp_path / "out" / "beeg_config.json").read_text())
    state = torch.load(tmp_path / "out" / "final_model.pt", weights_only=True)
    assert beeg["block_size"] == 40
    assert torch.equal(state["transformer.wpe.weight"], source.pos_embed.weight)  # [40, 32]
    back = load_model(tmp_path / "out")
    assert back.cfg == dataclasses.replace(source.cfg, n_ctx=40, pos_rows=None)
    for (name, p), q in zip(source.state_dict().items(), back.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    x = tokens(source.cfg, batch=2, seq=12)
    with torch.no_grad():
        assert torch.equal(back(x), source(x))
    official.save(back, tmp_path / "again")
    again = torch.load(tmp_path / "again" / "final_model.pt", weights_only=True)
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert json.loads((tmp_path / "again" / "beeg_config.json").read_text()) == beeg


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rms_norm": False}, "rms_norm"),
        ({"afrac_loctypes": "attn_in,resid_post_mlp"}, "afrac_loctypes"),
        ({"activation_type": "relu"}, "activation_type"),
        ({"d_pos_emb": 8}, "d_pos_emb"),
        ({"d_head": 4}, "d_head"),
    ],
)
def test_what_sparse_tf_cannot_express_is_named(tmp_path: Path, change: dict, named: str) -> None:
    folder = write_official(source_model(), tmp_path / "csp", change)
    with pytest.raises(official.OfficialFormatError, match=named):
        load_model(folder)


def test_bad_tensors_are_named(tmp_path: Path) -> None:
    folder = write_official(source_model(), tmp_path / "csp")
    state = torch.load(folder / "final_model.pt", weights_only=True)
    torch.save({**state, "final_logits_bias": torch.ones(64)}, folder / "final_model.pt")
    with pytest.raises(official.OfficialFormatError, match="final_logits_bias"):
        load_model(folder)
    torch.save({**state, "transformer.h.0.attn.extra": torch.ones(2)}, folder / "final_model.pt")
    with pytest.raises(official.OfficialFormatError, match=r"transformer\.h\.0\.attn\.extra"):
        load_model(folder)
    del state["transformer.h.1.mlp.c_fc.weight"]
    torch.save(state, folder / "final_model.pt")
    with pytest.raises(official.OfficialFormatError, match=r"missing transformer\.h\.1\.mlp\.c_fc"):
        load_model(folder)


def test_a_pickle_with_code_is_refused_unrun(tmp_path: Path) -> None:
    folder = write_official(source_model(), tmp_path / "csp")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self) -> tuple:
            return (marker.touch, ())

    planted = pickle.dumps({"lm_head.weight": Planted()}, protocol=2)  # torch.save's protocol
    (folder / "final_model.pt").write_bytes(planted)
    with pytest.raises(official.OfficialFormatError, match=r"final_model\.pt"):
        load_model(folder)
    assert not marker.exists()


def test_site_names_are_checked() -> None:
    with pytest.raises(ConfigError, match="afrac_sites"):
        GPTConfig(vocab_size=8, n_ctx=4, n_layer=1, d_model=16, afrac_sites=("attn_x",))


def test_convert_both_ways(tmp_path: Path) -> None:
    source = source_model()
    folder = write_official(source, tmp_path / "csp")

    def convert(*args: str) -> None:
        cmd = [sys.executable, "-m", "sparse_tf.cli", "convert", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr

    convert("--from", "circuit-sparsity", str(folder), "--out", str(tmp_path / "ours"))
    ours = load_model(tmp_path / "ours")
    x = tokens(source.cfg, batch=2, seq=12)
    with torch.no_grad():
        assert torch.equal(ours(x), source(x))
    convert(str(tmp_path / "ours"), "--to", "circuit-sparsity", "--out", str(tmp_path / "theirs"))
    with torch.no_grad():
        assert torch.equal(official.load(tmp_path / "theirs")(x), source(x))


@pytest.mark.interpreter
def test_some_sites_on_the_kernel_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """AbsTopK at some sites only (q and v but not k; reads but not the MLP's neurons): the
    kernels give the reference's logits."""
    model = source_model(afrac_sites=("attn_q", "attn_v", "mlp_in", "attn_out"))
    x = tokens(model.cfg, batch=2, seq=12)
    out = {}
    for backend in ("reference", "triton"):
        monkeypatch.setenv("SPARSE_TF_KERNELS", backend)
        with torch.no_grad():
            out[backend] = model(x)
    torch.testing.assert_close(out["triton"], out["reference"], rtol=1e-5, atol=1e-6)


def hand_built_circuit(folder: Path) -> Path:
    """A circuit.json of a 2-layer model, written as `sparse-tf prune` writes it: a quote
    circuit's shape (an MLP neuron, a QK pair, a residual read and the final residual)."""
    nodes = {
        "blocks.0.mlp.hook_post": [460, 985, 2790],
        "blocks.0.mlp.hook_in": [7],
        "blocks.1.attn.hook_q": [1312],
        "blocks.1.attn.hook_k": [1315],
        "blocks.1.hook_attn_out": [3, 250],
        "blocks.1.hook_resid_post": [0, 12],
    }
    scores = {"loss": 0.1, "loss_uncalibrated": 0.2, "accuracy": 1.0, "meets_target": True}
    circuit = Circuit(
        task="single_double_quote", target_loss=0.15, reached_target=True, nodes=nodes,
        n_nodes=sum(map(len, nodes.values())), n_total_nodes=136_192, n_edges=9,
        edges_by_type={}, edges_by_layer={}, logit_scale=1.0, sufficiency=scores,
        necessity=scores, full_model=scores, all_ablated=scores, loss_vs_k=[[10.0, 0.1]],
        config={"steps": 500},
    )  # fmt: skip
    folder.mkdir(parents=True)
    circuit.save(folder)
    return folder


def test_a_circuit_converts_to_circuit_data_and_back(tmp_path: Path) -> None:
    folder = hand_built_circuit(tmp_path / "circuit")
    cmd = [sys.executable, "-m", "sparse_tf.cli", "convert", str(folder), "--to",
           "circuit-sparsity", "--out", str(tmp_path / "viz")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    viz = torch.load(tmp_path / "viz" / "viz_data.pt", weights_only=True)
    data = viz["circuit_data"]
    kept = {k: v.tolist() for k, v in data.items() if len(v)}
    assert kept == {
        "0.mlp.post_act": [460, 985, 2790],
        "0.mlp.act_in": [7],
        "1.attn.q": [1312],
        "1.attn.k": [1315],
        "1.attn.resid_delta": [3, 250],
        "final_resid": [0, 12],
    }
    every_site = ["attn.act_in", "attn.q", "attn.k", "attn.v", "attn.resid_delta",
                  "mlp.act_in", "mlp.post_act", "mlp.resid_delta"]  # fmt: skip
    assert set(data) == {f"{i}.{k}" for i in range(2) for k in every_site} | {"final_resid"}
    assert all(v.dtype == torch.int64 and v.dim() == 1 for v in data.values())
    assert viz["num_total_nodes"] == 136_192
    assert viz["prune_config"]["task"] == "single_double_quote"
    back = read_viz_data(tmp_path / "viz", n_layer=2)
    assert back == load_circuit(folder).nodes
    with pytest.raises(CircuitError, match=r"pt: 1\.attn\.act_in: the model has 1 layers"):
        read_viz_data(tmp_path / "viz", n_layer=1)
    torch.save({"circuit_data": {"0.attn.x": torch.tensor([1])}}, tmp_path / "bad.pt")
    with pytest.raises(CircuitError, match=r"'0\.attn\.x' is not a circuit_sparsity node"):
        read_viz_data(tmp_path / "bad.pt", n_layer=2)


def gpt2_byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which data-gym files spell tokens in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    rest = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(rest)}


def write_tinypython_files(folder: Path) -> Path:
    """A small tinypython-style tokenizer as the released files: byte-level BPE merges learned
    on some Python, written as vocab.bpe, and encoder.json with data-gym ids (printable bytes
    first, then the others, then one id per merge in order)."""
    text = [p.read_text() for p in sorted((Path(json.__file__).parent).glob("*.py"))]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_PATTERN), "isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet,
                                             show_progress=False)  # fmt: skip
    bpe.train_from_iterator(text, trainer)
    merges = [m if isinstance(m, list) else m.split(" ")
              for m in json.loads(bpe.to_str())["model"]["merges"]]  # fmt: skip
    chars = gpt2_byte_chars()
    first = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order = first + [b for b in range(256) if b not in first]
    encoder = {chars[b]: i for i, b in enumerate(order)}
    for a, b in merges:
        encoder[a + b] = len(encoder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "encoder.json").write_text(json.dumps(encoder))
    (folder / "vocab.bpe").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def test_tinypython_files_give_tiktokens_ids(tmp_path: Path) -> None:
    """The released tokenizer's files read as tiktoken reads them (the official plugin's
    construction: data-gym ranks, its regex, <|endoftext|> after the last rank) and as
    sparse_tf reads them: the same ids on real code."""
    tiktoken = pytest.importorskip("tiktoken")  # a dev dependency
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    files = write_tinypython_files(tmp_path / "tinypython")
    ranks = data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    theirs = tiktoken.Encoding(
        "tinypython_test", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": len(ranks)},
    )  # fmt: skip
    ours = tinypython_bpe(files)
    sample = Path(email.utils.__file__).read_text() + "<|endoftext|>x = 'é' if a else \"\\n\"\n"
    ids = ours.encode(sample).ids
    assert ids == theirs.encode(sample, allowed_special="all")
    assert ours.decode(ids, skip_special_tokens=False) == sample
    assert ours.token_to_id("<|endoftext|>") == len(ranks)


def test_a_released_folder_converts_with_its_tokenizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = source_model()
    folder = write_official(source, tmp_path / "csp")
    files = write_tinypython_files(tmp_path / "tinypython")
    monkeypatch.delenv("TINYPYTHON_TOK_DIR", raising=False)
    with pytest.raises(official.OfficialFormatError, match=r"encoder\.json \+ vocab\.bpe"):
        official.load_tokenizer(folder)
    monkeypatch.setenv("TINYPYTHON_TOK_DIR", str(files))
    cmd = [sys.executable, "-m", "sparse_tf.cli", "convert", "--from", "circuit-sparsity",
           str(folder), "--out", str(tmp_path / "ours")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tok = load_tokenizer(tmp_path / "ours")
    assert tok.encode("def f(x):\n").ids == tinypython_bpe(files).encode("def f(x):\n").ids
