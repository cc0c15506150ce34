"""How much a trained text encoder still decides what the UNet reads at free soft-prompt slots, by slot norm.

The unbounded soft-prompt attack may put any vector in its slots. CLIP's text transformer is pre-LayerNorm: each
block adds a bounded update to the residual stream, so a slot vector far larger than every token embedding passes
through nearly unchanged, and the final LayerNorm hands the UNet its direction. This script puts random directions
of growing norm (multiples of the largest token-embedding norm) in ``k`` prefix slots of a prompt and prints, for
each encoder, how far its output at those slots is from the original encoder's, relative to how much the original's
output varies between inputs: near 0 means the encoder under test no longer changes what the UNet reads there.

Usage:
    python bench/soft_slot_reach.py --encoders runs/star-esd,runs/star
"""

from __future__ import annotations

import argparse

import torch


def reach_table(pipe, encoders: dict, *, prompt: str, k: int = 3, scales=(0.3, 1, 3, 10, 30, 100), n: int = 64,
                seed: int = 0) -> dict[float, dict[str, float]]:
    """{scale: {encoder name: mean ||E(e) - E0(e)|| / mean ||E0(e) - mean E0||}} at the ``k`` slots after <bos>."""
    from robust_encoders.core.text import encode_from_token_embeds, tokenize

    gen = torch.Generator().manual_seed(seed)
    ids = tokenize(pipe.tokenizer, [prompt] * n)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    largest = table.norm(dim=-1).max()
    base = pipe.text_encoder.get_input_embeddings()(ids).detach()
    out: dict[float, dict[str, float]] = {}
    for scale in scales:
        emb = base.clone()
        d = torch.randn(n, k, table.shape[1], generator=gen)
        emb[:, 1:1 + k] = d / d.norm(dim=-1, keepdim=True) * largest * scale
        with torch.no_grad():
            o0 = encode_from_token_embeds(pipe.text_encoder, emb, ids).last_hidden_state[:, 1:1 + k].flatten(0, 1)
            spread = (o0 - o0.mean(0)).norm(dim=-1).mean()
            row = {}
            for name, enc in encoders.items():
                o = encode_from_token_embeds(enc, emb, ids).last_hidden_state[:, 1:1 + k].flatten(0, 1)
                row[name] = float((o - o0).norm(dim=-1).mean() / spread)
        out[float(scale)] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", required=True, help="Comma-separated encoders (run folders, save_pretrained folders).")
    ap.add_argument("--prompt", default="a star on a blue background")
    ap.add_argument("--k", type=int, default=3, help="Slots (the soft-prompt attack's k).")
    args = ap.parse_args(argv)
    from robust_encoders.evaluation.loading import load_encoder_for_eval
    from robust_encoders.miniature import load_pipeline

    pipe = load_pipeline()
    encoders = dict(load_encoder_for_eval(e.strip(), pipe=pipe)[::-1] for e in args.encoders.split(",") if e.strip())
    res = reach_table(pipe, encoders, prompt=args.prompt, k=args.k)
    names = list(encoders)
    print("| slot norm (x largest token) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for scale, row in res.items():
        print(f"| {scale:g} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
