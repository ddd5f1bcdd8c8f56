"""Where does a training step's time go? Per-phase timings and the top operators (torch.profiler).

python benchmarks/speed/profile_train.py [--data F] [--steps 8] [--precision bf16|fp32] [--freeze-embeddings]
    [--freeze-layers K] [--attention-dropout P] [--profile]

Takes real abstracts (default: the medical-abstracts data), tokenizes them as medclf does (max
length 256, head-tail), and runs `--steps` optimizer steps of batch 16 on the packaged encoder with
a fresh 5-class head, after 2 warm-up steps. Prints the mean seconds of forward, backward and
optimizer (clip + AdamW + zero_grad) per step, training samples/s, tokens per sample and peak RSS.
With --profile, also the 20 most expensive operators of the timed steps (self CPU time).
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))  # the benchmarks folder: bench_common, the helpers every script shares

from bench_common import data_parser  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = data_parser(__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--freeze-embeddings", action="store_true")
    parser.add_argument("--freeze-layers", type=int, default=0, help="also freeze the lowest K encoder layers")
    parser.add_argument("--attention-dropout", type=float, default=None,
                        help="set the attention-probability dropout (default: the model's, 0.1)")
    parser.add_argument("--trim-every", type=int, default=0, help="call glibc malloc_trim(0) every N steps")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from medclf.model.batching import collate, encode, length_grouped_batches
    from medclf.model.modeling import default_model_dir, load_classifier, load_tokenizer, quiet_transformers

    texts = pd.read_csv(args.data)[args.text_column].astype(str).tolist()
    source = str(default_model_dir())
    tokenizer = load_tokenizer(source)
    torch.manual_seed(0)
    with quiet_transformers():
        model = load_classifier(source, labels=[str(i) for i in range(5)])
    if args.freeze_embeddings or args.freeze_layers:
        model.bert.embeddings.requires_grad_(False)
    for layer in model.bert.encoder.layer[: args.freeze_layers]:
        layer.requires_grad_(False)
    if args.attention_dropout is not None:
        for layer in model.bert.encoder.layer:
            layer.attention.self.dropout.p = args.attention_dropout
    model.train()
    n = args.batch_size * (args.steps + 2) * 4
    enc = encode(tokenizer, texts[:n], max_length=args.max_length, long_text="head-tail")
    batches = length_grouped_batches(enc.lengths, args.batch_size, torch.Generator().manual_seed(0))[: args.steps + 2]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    y = torch.randint(0, 5, (len(enc.input_ids),), generator=torch.Generator().manual_seed(0))
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    phases = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    samples = tokens = 0

    import ctypes

    libc = ctypes.CDLL("libc.so.6") if args.trim_every else None
    count = 0

    def step(batch: list[int], timed: bool) -> None:
        nonlocal samples, tokens
        inputs = collate([enc.input_ids[i] for i in batch], tokenizer.pad_token_id)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            logits = model(**inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), y[batch])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        nonlocal count
        count += 1
        if libc is not None and count % args.trim_every == 0:
            libc.malloc_trim(0)
        t3 = time.perf_counter()
        if timed:
            phases["forward"] += t1 - t0
            phases["backward"] += t2 - t1
            phases["optimizer"] += t3 - t2
            samples += len(batch)
            tokens += int(inputs["attention_mask"].sum())

    for batch in batches[:2]:
        step(batch, timed=False)
    profiler = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        profiler = profile(activities=[ProfilerActivity.CPU])
        profiler.__enter__()
    for batch in batches[2:]:
        step(batch, timed=True)
    if profiler is not None:
        profiler.__exit__(None, None, None)
    total = sum(phases.values())
    trainable = sum(p.numel() for p in params)
    print(f"precision {args.precision}  freeze embeddings {args.freeze_embeddings or bool(args.freeze_layers)}  "
          f"frozen layers {args.freeze_layers}  attention dropout "
          f"{model.bert.encoder.layer[0].attention.self.dropout.p}  trainable params {trainable / 1e6:.1f}M  threads {torch.get_num_threads()}")
    print(f"{args.steps} steps, {samples} samples, {tokens / samples:.0f} tokens/sample: "
          f"{samples / total:.2f} samples/s")
    for name, seconds in phases.items():
        print(f"  {name:9s} {seconds / args.steps:6.3f} s/step  {100 * seconds / total:5.1f}%")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
