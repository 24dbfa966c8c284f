"""``gpstoken`` command line: reconstruct, encode, decode, show, generate, tokenize, eval, studio, models,
convert, train.

Every failure is reported as one line on stderr that names the problem and the fix, with
exit code 1 (2 for usage errors, 130 for Ctrl-C); ``--debug`` shows the traceback instead.
Outputs are written atomically (:mod:`gpstoken.io`).
"""
from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image

from .io import image_format, save_image


class CLIError(Exception):
    """A failure the CLI reports as one line (problem and fix)."""


def _open_image(path: str, name: str = "input") -> Image.Image:
    from .images import open_image

    try:
        return open_image(path, name)
    except (OSError, ValueError) as e:
        raise CLIError(str(e)) from e


def _save_image(img: Image.Image, path: str) -> None:
    print(f"wrote {save_image(img, path)}")


def _check_outputs(*paths: Optional[str]) -> None:
    """Fail before any work when an image output is a folder or has no image suffix."""
    for path in paths:
        if path:
            image_format(path)


def _load_tokens(path: str):
    from .tokens import GPSTokens

    if Path(path).is_dir():
        raise CLIError(f"{path} is a folder, not a token file; give a .gpst file (make one with gpstoken encode)")
    if not Path(path).is_file():
        raise CLIError(f"token file not found: {path}; check the path (make one with gpstoken encode)")
    return GPSTokens.load(path)


def _cmd_reconstruct(a: argparse.Namespace) -> None:
    import gpstoken

    _check_outputs(a.output, a.layout)
    img = _open_image(a.input)
    tok = gpstoken.load_tokenizer(a.model, device=a.device, dtype=a.dtype)
    tokens = tok.encode(img, a.tokens, fit_steps=a.fit_steps)
    _save_image(tok.decode(tokens), a.output)
    if a.layout:
        _save_image(tokens.draw(img), a.layout)


def _cmd_encode(a: argparse.Namespace) -> None:
    import gpstoken

    from .tokens import token_file

    token_file(a.output, "-o")
    tok = gpstoken.load_tokenizer(a.model, device=a.device, dtype=a.dtype)
    tokens = tok.encode(_open_image(a.input), a.tokens, fit_steps=a.fit_steps)
    path = tokens.save(a.output)
    print(f"wrote {path} ({tokens.geometry.shape[1]} tokens, model {tokens.model})")


def _cmd_decode(a: argparse.Namespace) -> None:
    import gpstoken

    _check_outputs(a.output)
    tokens = _load_tokens(a.input)
    _save_image(gpstoken.decode(tokens, model=a.model, device=a.device), a.output)


def _cmd_show(a: argparse.Namespace) -> None:

    _check_outputs(a.output)
    tokens = _load_tokens(a.input)
    _save_image(tokens.draw(_open_image(a.image, "--image") if a.image else None), a.output)


def _cmd_generate(a: argparse.Namespace) -> None:
    import gpstoken

    from .io import output_folder

    out = output_folder(a.output, "-o")
    gen = gpstoken.load_generator(a.model, device=a.device)
    number = a.class_id.strip().removeprefix("-").isdigit()
    class_id = gen.class_index(int(a.class_id) if number else a.class_id)
    images = gpstoken.generate(class_id, n=a.n, seed=a.seed, cfg_scale=a.cfg_scale, steps=a.steps,
                               sampler=a.sampler, guidance_interval=a.guidance_interval, model=gen)
    for i, img in enumerate(images):
        _save_image(img, str(out / f"class{class_id}_{i:03d}.png"))


def _cmd_models(a: argparse.Namespace) -> None:
    from . import hub

    if a.name is None:
        for name in hub.list_pretrained():
            spec = hub.get_spec(name)
            where = "embedded" if spec.embedded else f"{spec.repo_id}:{spec.filename}"
            print(f"{name:26s} {spec.kind:10s} {where:45s} {spec.description}")
        print("gpstoken models NAME: details of one model (a generator's classes and sampling defaults)")
        return
    if a.name == "default":  # one model per kind
        for kind in hub.KINDS:
            _show_model(hub.get_spec("default", kind))
        return
    _show_model(hub.get_spec(a.name))


def _show_model(spec) -> None:
    print(f"{spec.name}: {spec.description}")
    if not spec.embedded:
        print(f"  file: {spec.repo_id}:{spec.filename} (revision {spec.revision})")
    if spec.kind == "tokenizer" and spec.embedded:
        from . import checkpoint, hub

        path = hub.resolve(spec.name, "tokenizer").path
        steps = checkpoint.fit_steps(checkpoint.read_metadata(path), str(path))
        print(f"  encode: the encoder, then {steps} test-time fitting steps (--fit-steps 0: the encoder alone)")
    if spec.kind == "generator":
        config = spec.generator_config() if spec.arch is not None else _embedded_generator_config(spec)
        s = config.sampling
        print(f"  tokenizer: {config.tokenizer}; {config.n_tokens} tokens; layout bank: {spec.layout_bank or 'none'}")
        print(f"  sampling defaults: sampler={s.sampler} steps={s.steps} cfg_scale={s.cfg_scale} "
              f"guidance_interval={s.guidance_interval}")
        names = config.class_names or [str(i) for i in range(config.texture.num_classes)]
        print(f"  {len(names)} classes (generate(class_id=INDEX or NAME)):")
        for i, n in enumerate(names):
            print(f"  {i:5d}  {n}")


def _embedded_generator_config(spec):
    from . import checkpoint, hub

    return checkpoint.GeneratorConfig.from_dict(hub.resolve(spec.name, "generator").config)


def _cmd_convert(a: argparse.Namespace) -> None:
    from . import hub

    hub.convert_checkpoint(a.input, a.output, trust=a.trust)
    print(f"wrote {a.output}")


def _cmd_tokenize(a: argparse.Namespace) -> None:
    from .pretokenize import tokenize

    manifest = tokenize(a.src, a.out, a.tokens, model=a.model, size=a.size, batch_size=a.batch_size,
                        shard_size=a.shard_size, num_workers=a.workers, split=a.split, image_column=a.image_column,
                        labeled=a.labeled, device=a.device, dtype=a.dtype, fit_steps=a.fit_steps)
    if manifest is None:
        print(f"this process's shards are done; the last process to finish writes {Path(a.out) / 'manifest.json'}")
        return
    skipped = f", {len(manifest['skipped'])} skipped (listed in the manifest)" if manifest["skipped"] else ""
    print(f"wrote {manifest['images']} images in {len(manifest['shards'])} shards to {a.out}{skipped}")


def _cmd_studio(a: argparse.Namespace) -> None:
    import errno

    from .studio import Limits, serve

    if a.max_side < 32:
        raise ValueError(f"--max-side: must be at least 32 pixels, got {a.max_side}")
    if not 0 <= a.port <= 65535:
        raise ValueError(f"--port: must be in [0, 65535] (0: any free port), got {a.port}")
    generator = None if a.generator.lower() == "none" else a.generator
    try:
        serve(a.model, generator, host=a.host, port=a.port, device=a.device, limits=Limits(max_side=a.max_side),
              open_browser=not a.no_browser)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise OSError(f"port {a.port} on {a.host} is in use; pick another with --port") from None
        raise


def _cmd_eval(a: argparse.Namespace) -> None:
    from .evaluate import evaluate, markdown_table

    results = evaluate(a.src, a.model, a.tokens, out=a.out, size=a.size, batch_size=a.batch_size,
                       fid_weights=a.fid_weights, num_workers=a.workers, split=a.split, image_column=a.image_column,
                       device=a.device, dtype=a.dtype, fit_steps=a.fit_steps)
    if results is None:
        return
    print(markdown_table(results))
    written = ", ".join(f.name for f in (Path(a.out) / n for n in ("eval.json", "eval.md", "eval.png")) if f.exists())
    print(f"wrote {written} to {a.out}" + (f" (plot {results['plot']})" if "plot" in results else ""))


TRAIN_KINDS = ("tokenizer", "layout", "texture")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``gpstoken train`` (run by :func:`gpstoken.train.cli.run_args`)."""
    p.add_argument("kind", choices=TRAIN_KINDS, help="what to train: the tokenizer, the layout SiT or the texture SiT")
    p.add_argument("--config", required=True, help="train config JSON (see examples/configs/)")
    p.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init-from", default=None, help="safetensors weights to start from (fine-tuning)")
    p.add_argument("--max-steps", type=int, default=None, help="override max_steps")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="time budget: checkpoint, export and stop after this many minutes")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                   help="override mixed_precision")
    p.add_argument("--tokenizer", default=None, help="texture: override the config's tokenizer")
    p.add_argument("--layout-from", default=None, help="texture: bundle this layout export into the generator")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="tokenizer/texture: upload the exported model to this Hub repo (owner/name) at the end")


def _cmd_train(a: argparse.Namespace) -> None:
    from .train.cli import report, run_args

    report(a, run_args(a))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpstoken", description="GPSToken image tokenizer and generator")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")

    def command(name: str, **kw) -> argparse.ArgumentParser:  # accepts --debug after the command too
        return sub.add_parser(name, parents=[debug], **kw)

    def common(sp: argparse.ArgumentParser, model_default: Optional[str] = "default") -> None:
        sp.add_argument("--model", default=model_default, help="registry name, Hub repo id or local .safetensors")
        sp.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")

    def run_dtype(sp: argparse.ArgumentParser, record: str) -> None:
        sp.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="encoder precision (auto: bfloat16 on CUDA and on a CPU with native bfloat16, AVX512-BF16 "
                             f"or AMX, else float32; float32: exact tokens; {record} records the dtype used)")

    def fit_steps(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--fit-steps", type=int, default=None,
                        help="test-time fitting steps after the encoder (default: the model's own, 4 for the embedded "
                             "default, 0 for the official models; 0: none, faster)")

    def precision(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="float32 (default: exact tokens); bfloat16 on CUDA or on a CPU with native bfloat16 "
                             "(AVX512-BF16, AMX): faster, the same quality within 0.02 dB on the held-out photos; "
                             "float16: CUDA only")

    r = command("reconstruct", help="encode and decode an image")
    r.add_argument("input")
    r.add_argument("-o", "--output", required=True)
    r.add_argument("--tokens", type=int, default=None, help="tokens per 256x256 patch")
    r.add_argument("--layout", default=None, help="also save a picture of the Gaussian layout here")
    fit_steps(r)
    precision(r)
    common(r)
    r.set_defaults(func=_cmd_reconstruct)

    e = command("encode", help="encode an image into a .gpst token file")
    e.add_argument("input")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--tokens", type=int, default=None, help="tokens per 256x256 patch")
    fit_steps(e)
    precision(e)
    common(e)
    e.set_defaults(func=_cmd_encode)

    d = command("decode", help="decode a .gpst token file into an image")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True)
    common(d, model_default=None)
    d.set_defaults(func=_cmd_decode)

    s = command("show", help="draw the Gaussians of a .gpst token file")
    s.add_argument("input")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--image", default=None, help="draw over this image (default: grey)")
    s.set_defaults(func=_cmd_show)

    g = command("generate", help="class-conditional two-stage generation")
    g.add_argument("--class", dest="class_id", required=True,
                   help='class index or name, e.g. 207 or "golden retriever" (see: gpstoken models NAME)')
    g.add_argument("-o", "--output", required=True, help="output folder")
    g.add_argument("-n", type=int, default=4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cfg-scale", type=float, default=None, help="default: the model's")
    g.add_argument("--steps", type=int, default=None, help="default: the model's")
    g.add_argument("--sampler", default=None, choices=["sde", "ode", "euler", "heun", "dopri5"],
                   help="default: the model's")
    g.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="flow times in [0, 1] where guidance applies (default: the model's)")
    common(g)
    g.set_defaults(func=_cmd_generate)

    k = command("tokenize", help="tokenize a folder / list file / dataset into sharded safetensors")
    k.add_argument("src", metavar="SRC", help="folder of images (recursive), .txt list of paths, or a datasets dataset")
    k.add_argument("out", metavar="OUT", help="output folder (rerun the same command to resume)")
    k.add_argument("--tokens", type=int, required=True, help="tokens per 256x256 patch")
    k.add_argument("--size", type=int, default=256, help="shorter side resized to this, then centre crop")
    k.add_argument("--batch-size", type=int, default=32)
    k.add_argument("--shard-size", type=int, default=1024, help="source images per shard")
    k.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers: decode + partition, on the CPU also encode with one thread each "
                        "(default: CPU one per core, shared among this machine's processes, at most 8; CUDA up to 4)")
    k.add_argument("--split", default="train", help="dataset split (datasets sources)")
    k.add_argument("--image-column", default=None, help="image column (datasets sources; default: the first Image)")
    k.add_argument("--labeled", action="store_true", help="SRC's sub-folders are classes: store each image's class")
    run_dtype(k, "the manifest")
    fit_steps(k)
    common(k)
    k.set_defaults(func=_cmd_tokenize)

    st = command("studio", help="interactive layout editor in the browser (docs/studio.md)")
    st.add_argument("--generator", default="default", help="generator for the Generate panel, or 'none'")
    st.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    st.add_argument("--port", type=int, default=7860, help="port (0: any free port)")
    st.add_argument("--max-side", type=int, default=256,
                    help="larger images are downscaled to this longer side (above 256: several patches)")
    st.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    common(st)
    st.set_defaults(func=_cmd_studio)

    v = command("eval", help="reconstruction quality (PSNR, SSIM, ST-LPIPS, rFID) against the token count")
    v.add_argument("src", metavar="SRC", help="folder of images (recursive), .txt list of paths, or a datasets dataset")
    v.add_argument("--model", nargs="+", default=["default"], help="one or more tokenizers (one line each in the plot)")
    v.add_argument("--tokens", type=int, nargs="+", default=[64, 128, 256], help="tokens per 256x256 patch")
    v.add_argument("--size", type=int, default=256, help="shorter side resized to this, then centre crop")
    v.add_argument("-o", "--out", default="eval", help="folder for eval.json, eval.md, eval.png")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--fid-weights", default=None,
                   help="torch-fidelity Inception weights file (weights-inception-2015-12-05-6726825d.pth), offline")
    v.add_argument("--workers", type=int, default=None, help="DataLoader workers (decode + partition)")
    v.add_argument("--split", default="train", help="dataset split (datasets sources)")
    v.add_argument("--image-column", default=None, help="image column (datasets sources)")
    v.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda:LOCAL_RANK if available)")
    run_dtype(v, "eval.json")
    fit_steps(v)
    v.set_defaults(func=_cmd_eval)

    m = command("models", help="list the registered pretrained checkpoints, or show one")
    m.add_argument("name", nargs="?", default=None, help="a registry name: show its details and classes")
    m.set_defaults(func=_cmd_models)

    c = command("convert", help="convert an official PyTorch checkpoint to safetensors")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--trust", action="store_true", help="allow unpickling this file (only for files you trust)")
    c.set_defaults(func=_cmd_convert)

    t = command("train", help="train models (needs: pip install gpstoken[train])",
                description="Train GPSToken models (needs gpstoken[train]).")
    add_train_arguments(t)
    t.set_defaults(func=_cmd_train)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        done = {"train": "the last complete checkpoint is kept; continue with --resume",
                "tokenize": "the finished shards are kept; rerun the same command to resume"}.get(
                    args.command, "no partial output was written")
        print(f"gpstoken {args.command}: interrupted ({done})", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI reports every failure as one line
        if args.debug:
            raise
        print(f"gpstoken {args.command}: error: {_describe(e)}", file=sys.stderr)
        return 1
    return 0


#: the library's argument names in error messages -> the flags of the commands that pass them
_FLAGS = {"n_tokens": "--tokens", "fit_steps": "--fit-steps", "name_or_path": "--model", "dtype": "--dtype",
          "device": "--device"}


def _describe(e: BaseException) -> str:
    """One line naming the problem and the fix."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        where = f" writing {e.filename}" if e.filename else ""
        return f"no space left on the device{where}; free some space or write the output elsewhere (-o)"
    if isinstance(e, PermissionError):
        return f"permission denied: {e.filename or e}; choose a file you may read or a folder you may write to"
    if isinstance(e, (CLIError, ValueError, TypeError, OSError, ImportError, RuntimeError)):
        text = str(e)
        name, sep, rest = text.partition(": ")
        if sep and name in _FLAGS:  # the library names its Python argument; say the command's flag
            text = f"{_FLAGS[name]}: {rest}"
    else:
        text = f"internal error {type(e).__name__}: {e}; rerun with --debug for the traceback and report it"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
