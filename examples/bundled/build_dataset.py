#!/usr/bin/env python3
"""Rebuild the imagetok-photos data set (``data/photos/{train,dev}``) from the packages it came from.

The bundled model ``vqgan-f8-4096.imagetok-photos`` was trained on these 42 images (38 train, 4 dev).
``MANIFEST.json`` beside this script lists every file: its source, licence, split, size in pixels,
the sha256 of the JPEG file and the sha256 of its pixels before JPEG encoding.

Sources (see README.md beside this script for the licences):

- train/plasma_*.jpg: Debian package ``plasma-workspace-wallpapers`` 4:5.27.5-2 (GPL-2+).
  The ``.deb`` is fetched with ``apt-get download`` (or given with ``--deb``) and unpacked with
  ``dpkg -x`` (a pure-Python unpacker is used where dpkg is missing). For each wallpaper the image
  is the largest one in ``usr/share/wallpapers/<Name>/contents/images/`` (the other resolutions in
  the package are symlinks to it, or portrait variants), never ``images_dark/``.
- train/skimage_*.jpg: scikit-image 0.26 ``skimage.data.<name>()``
  (``motorcycle_left`` is ``skimage.data.stereo_motorcycle()[0]``).
- dev/sklearn_{china,flower}.jpg: scikit-learn ``load_sample_images()``.
- dev/mpl_grace_hopper.jpg: matplotlib ``mpl-data/sample_data/grace_hopper.jpg``.
- dev/scipy_face.jpg: ``scipy/misc/face.dat`` of the scipy 1.11.4 wheel (bz2-compressed raw
  768x1024x3 uint8, read here without installing that scipy; ``scipy.misc.face()`` of scipy < 1.12
  and ``scipy.datasets.face()``, which downloads the same face.dat, give the same pixels).

Processing: convert to RGB, resize with Pillow's LANCZOS filter (``reducing_gap=2.0``) so that the
longer side is at most 1024 px (sizes rounded to the nearest pixel), save as JPEG quality 95
(Pillow defaults otherwise: 4:2:0 chroma subsampling, baseline). The only metadata written is the
JPEG comment of a source JPEG file (7 wallpapers carry one, e.g. the author and licence), as
Pillow >= 9.4 copies it by default; the Python-package images are read as pixel arrays.

Usage (from examples/bundled)::

    python build_dataset.py                       # -> ./data/photos/{train,dev}, downloads into ./downloads
    python build_dataset.py --deb plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb --scipy-wheel scipy-1.11.4-*.whl
    python build_dataset.py --compare /path/to/reference/photos   # also diff against a reference copy

The script then checks its output against MANIFEST.json (file list, split, size: a mismatch exits
with status 1) and prints, per file, whether the pixels and the JPEG bytes match the recorded sha256
(JPEG bytes depend on Pillow's libjpeg build, pixels only on the sources and the resize), and with
``--compare`` the mean and max absolute pixel difference against the reference files.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
MAX_SIDE = 1024
JPEG_QUALITY = 95

DEB_PACKAGE = "plasma-workspace-wallpapers"
DEB_VERSION = "4:5.27.5-2"
DEB_GLOB = "plasma-workspace-wallpapers_*5.27.5-2_all.deb"
# sha256 of plasma-workspace-wallpapers_4%3a5.27.5-2_all.deb as served by Debian bookworm.
DEB_SHA256 = "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b"
WALLPAPERS = "usr/share/wallpapers"

SCIPY_VERSION = "1.11.4"
SCIPY_FACE_MEMBER = "scipy/misc/face.dat"
# sha256 of face.dat (same in the scipy 1.11 wheels and in scipy.datasets' registry).
FACE_DAT_SHA256 = "9d8b0b4d081313e2b485748c770472e5a95ed1738146883d84c7030493e82886"

# skimage.data names that are not functions of their own.
SKIMAGE_ALIASES = {"motorcycle_left": ("stereo_motorcycle", 0)}


class BuildError(Exception):
    """A source could not be fetched or read; the message says which and what to do."""


# ----------------------------------------------------------------------------- processing


def process(img: Image.Image) -> Image.Image:
    """RGB, longer side at most MAX_SIDE (LANCZOS, reducing_gap=2.0); returns an RGB PIL image.

    Pixels only: metadata of the source (a JPEG comment, an ICC profile), which Pillow would copy
    into the saved JPEG, is dropped.
    """
    img = Image.fromarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
    w, h = img.size
    scale = MAX_SIDE / max(w, h)
    if scale < 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return img


def encode_jpeg(img: Image.Image, comment: bytes | None = None) -> bytes:
    """JPEG quality 95 (Pillow defaults otherwise), with `comment` as its COM segment if given."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY, **({"comment": comment} if comment else {}))
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels_sha256(img: Image.Image) -> str:
    """sha256 of the HxWx3 uint8 pixels (row-major), independent of the JPEG encoder."""
    return sha256(np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8)).tobytes())


# ----------------------------------------------------------------------------- the Debian wallpapers


def fetch_deb(download_dir: Path) -> Path:
    """Find or `apt-get download` the pinned .deb in download_dir."""
    found = sorted(download_dir.glob(DEB_GLOB))
    if found:
        return found[0]
    if not shutil.which("apt-get"):
        raise BuildError(
            f"no {DEB_GLOB} in {download_dir} and apt-get is missing: download {DEB_PACKAGE} {DEB_VERSION} "
            "(Debian 12 bookworm, arch all) by hand and pass it with --deb")
    download_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", f"{DEB_PACKAGE}={DEB_VERSION}"]
    print(f"$ (cd {download_dir} && {' '.join(cmd)})", flush=True)
    r = subprocess.run(cmd, cwd=download_dir, check=False)
    found = sorted(download_dir.glob(DEB_GLOB))
    if r.returncode != 0 or not found:
        raise BuildError(
            f"`apt-get download {DEB_PACKAGE}={DEB_VERSION}` failed (exit {r.returncode}); this version is in "
            "Debian 12 bookworm: run `apt-get update` first, or fetch the .deb from a Debian mirror or "
            "snapshot archive and pass it with --deb")
    return found[0]


def _extract_deb_python(deb: Path, dest: Path) -> None:
    """`dpkg -x` without dpkg: read the ar archive, unpack data.tar.* (only usr/share/wallpapers)."""
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise BuildError(f"{deb} is not a Debian package (no ar header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise BuildError(f"{deb} has no data.tar member")
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            f.read(size % 2)
            if name.startswith("data.tar"):
                break
    mode = {"data.tar.xz": "r:xz", "data.tar.gz": "r:gz", "data.tar.bz2": "r:bz2", "data.tar": "r:"}.get(name)
    if mode is None:
        raise BuildError(f"{deb}: {name} cannot be unpacked without dpkg; install dpkg and retry")
    with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as tar:
        members = [m for m in tar.getmembers() if m.name.lstrip("./").startswith(WALLPAPERS)]
        try:
            tar.extractall(dest, members=members, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(dest, members=members)


def unpack_deb(deb: Path, dest: Path) -> Path:
    """Unpack the .deb into dest (dpkg -x, or the Python fallback); returns dest/usr/share/wallpapers."""
    digest = sha256(deb.read_bytes())
    if digest != DEB_SHA256:
        print(f"WARNING: {deb.name} sha256 {digest} differs from the one the data set was built from "
              f"({DEB_SHA256}); is it {DEB_PACKAGE} {DEB_VERSION}?", file=sys.stderr)
    root = dest / WALLPAPERS
    if not root.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        if shutil.which("dpkg"):
            print(f"$ dpkg -x {deb} {dest}", flush=True)
            subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
        else:
            print(f"dpkg not found: unpacking {deb.name} with Python", flush=True)
            _extract_deb_python(deb, dest)
    if not root.is_dir():
        raise BuildError(f"{deb} unpacked to {dest} but has no {WALLPAPERS}/")
    return root


def pick_wallpaper(wallpapers: Path, name: str, size: tuple[int, int]) -> Path:
    """The source image of wallpaper `name`: among the distinct files in <name>/contents/images/
    (symlinks resolved), those whose processed size equals `size`, the largest; else the largest."""
    folder = wallpapers / name / "contents" / "images"
    paths = {os.path.realpath(p) for p in glob.glob(str(folder / "*")) if os.path.isfile(p)}
    if not paths:
        raise BuildError(f"no images in {folder}")
    cands = []
    for p in sorted(paths):
        with Image.open(p) as im:
            w, h = im.size
        s = min(1.0, MAX_SIDE / max(w, h))
        cands.append((w * h, (round(w * s), round(h * s)) == size, p))
    matching = [c for c in cands if c[1]] or cands
    return Path(max(matching)[2])


# ----------------------------------------------------------------------------- Python package data


def skimage_image(name: str) -> Image.Image:
    try:
        import skimage
        import skimage.data
    except ImportError as e:
        raise BuildError(f"scikit-image is needed for skimage_{name}: pip install 'scikit-image==0.26.*'") from e
    fn, index = SKIMAGE_ALIASES.get(name, (name, None))
    out = getattr(skimage.data, fn)()
    if index is not None:
        out = out[index]
    return Image.fromarray(np.asarray(out, dtype=np.uint8))


def sklearn_image(name: str) -> Image.Image:
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise BuildError(f"scikit-learn is needed for sklearn_{name}: pip install scikit-learn") from e
    data = load_sample_images()
    for fname, img in zip(data.filenames, data.images):
        if Path(fname).stem == name:
            return Image.fromarray(img)
    raise BuildError(f"sklearn's load_sample_images() has no {name}.jpg (it has {data.filenames})")


def matplotlib_image(name: str) -> Image.Image:
    try:
        import matplotlib
    except ImportError as e:
        raise BuildError(f"matplotlib is needed for mpl_{name}: pip install matplotlib") from e
    path = Path(matplotlib.get_data_path()) / "sample_data" / f"{name}.jpg"
    if not path.is_file():
        raise BuildError(f"{path} is missing from this matplotlib install")
    with Image.open(path) as im:  # read as pixels, like matplotlib.pyplot.imread (no JPEG comment)
        return Image.fromarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _face_from_dat(raw: bytes, where: str) -> Image.Image:
    digest = sha256(raw)
    if digest != FACE_DAT_SHA256:
        raise BuildError(f"{where}: face.dat sha256 {digest} != {FACE_DAT_SHA256}")
    return Image.fromarray(np.frombuffer(bz2.decompress(raw), dtype=np.uint8).reshape(768, 1024, 3))


def scipy_face(wheel: Path | None, download_dir: Path) -> Image.Image:
    """scipy 1.11's face: from a given wheel, else scipy.misc.face (scipy < 1.12), else the wheel
    fetched with `pip download` (PyPI), else scipy.datasets.face() (pooch + network)."""
    if wheel is None:
        with warnings.catch_warnings():  # scipy.misc is deprecated (and has no face from 1.12 on)
            warnings.simplefilter("ignore")
            try:
                import scipy.misc
                face = getattr(scipy.misc, "face", None)
                if face is not None:
                    return Image.fromarray(np.asarray(face(), dtype=np.uint8))
            except ImportError:
                pass
        found = sorted(download_dir.glob(f"scipy-{SCIPY_VERSION}-*.whl"))
        if not found:
            download_dir.mkdir(parents=True, exist_ok=True)
            # Any platform's wheel holds the same face.dat; this one exists for every pip.
            cmd = [sys.executable, "-m", "pip", "download", f"scipy=={SCIPY_VERSION}", "--no-deps",
                   "--only-binary", ":all:", "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                   "-d", str(download_dir)]
            print("$ " + " ".join(cmd), flush=True)
            subprocess.run(cmd, check=False)
            found = sorted(download_dir.glob(f"scipy-{SCIPY_VERSION}-*.whl"))
        if found:
            wheel = found[0]
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            try:
                raw = z.read(SCIPY_FACE_MEMBER)
            except KeyError as e:
                raise BuildError(f"{wheel} has no {SCIPY_FACE_MEMBER}: use a scipy 1.11.x wheel") from e
        return _face_from_dat(raw, str(wheel))
    try:
        import scipy.datasets
        return Image.fromarray(np.asarray(scipy.datasets.face(), dtype=np.uint8))
    except Exception as e:  # any failure here means the same thing to the user
        raise BuildError(
            f"scipy face: no scipy {SCIPY_VERSION} wheel (pip download failed) and scipy.datasets.face() "
            f"failed ({type(e).__name__}: {e}); pass --scipy-wheel scipy-{SCIPY_VERSION}-*.whl") from e


# ----------------------------------------------------------------------------- build and verify


def load_source(entry: dict, args: argparse.Namespace, state: dict) -> tuple[Image.Image, str]:
    """The unprocessed source image of one manifest entry and a short description of where it came from."""
    stem = Path(entry["file"]).stem
    kind, _, name = stem.partition("_")
    if kind == "plasma":
        if "wallpapers" not in state:
            try:
                if args.wallpapers:
                    state["wallpapers"] = Path(args.wallpapers)
                else:
                    deb = Path(args.deb) if args.deb else fetch_deb(Path(args.downloads))
                    state["wallpapers"] = unpack_deb(deb, Path(args.downloads) / "plasma-workspace-wallpapers")
            except BuildError as err:
                state["wallpapers"] = err  # fail once, not once per wallpaper
        if isinstance(state["wallpapers"], BuildError):
            raise state["wallpapers"]
        path = pick_wallpaper(state["wallpapers"], name, tuple(entry["size"]))
        where = f"{name}/contents/images/{path.name}"
        if entry.get("source_image", where) != where:
            print(f"WARNING {entry['file']}: picked {where}, MANIFEST says {entry['source_image']}", file=sys.stderr)
        with Image.open(path) as im:
            im.load()
            return im, where
    if kind == "skimage":
        return skimage_image(name), f"skimage.data {name}"
    if kind == "sklearn":
        return sklearn_image(name), f"sklearn {name}.jpg"
    if kind == "mpl":
        return matplotlib_image(name), f"matplotlib {name}.jpg"
    if kind == "scipy" and name == "face":
        wheel = Path(args.scipy_wheel) if args.scipy_wheel else None
        return scipy_face(wheel, Path(args.downloads)), "scipy face.dat"
    raise BuildError(f"MANIFEST entry {entry['file']}: unknown source kind {kind!r}")


def versions() -> str:
    out = []
    for mod, label in [("PIL", "pillow"), ("numpy", "numpy"), ("skimage", "scikit-image"),
                       ("sklearn", "scikit-learn"), ("matplotlib", "matplotlib")]:
        try:
            out.append(f"{label} {__import__(mod).__version__}")
        except ImportError:
            out.append(f"{label} -")
    return ", ".join(out)


def verify(out: Path, manifest: list[dict], records: dict | None, compare: Path | None) -> int:
    """Check file list, split and size against the manifest; print the sha256/pixel summary.
    records: what this run built (None with --verify-only). Returns the number of hard errors
    (missing/extra files, wrong split or size, a source that failed to build)."""
    errors = 0
    expected = {e["file"] for e in manifest}
    present = {str(p.relative_to(out)) for p in out.glob("*/*.jpg")}
    for f in sorted(present - expected):
        print(f"ERROR extra file not in MANIFEST: {f}")
        errors += 1
    for f in sorted(expected - present):
        print(f"ERROR missing: {f}")
        errors += 1
    n_bytes = n_pix = n_cmp = 0
    worst = 0.0
    header = f"{'file':40s} {'size':>9s} {'pixels':>6s} {'jpeg':>5s}"
    if compare:
        header += f" {'MAD':>7s} {'max':>4s}"
    print(header + "  source")
    for e in manifest:
        f = e["file"]
        if f not in present:
            continue
        path = out / f
        with Image.open(path) as im:
            size = list(im.size)
            dec = np.asarray(im.convert("RGB"), dtype=np.int16)
        split = f.split("/")[0]
        if split != e["split"] or size != list(e["size"]):
            print(f"ERROR {f}: split {split} size {size}, MANIFEST says split {e['split']} size {e['size']}")
            errors += 1
        rec = (records or {}).get(f, {})
        if records is not None and not rec:
            print(f"ERROR {f}: not rebuilt in this run (its source failed); the file is stale")
            errors += 1
        pix_ok = rec.get("pixels_sha256") == e.get("pixels_sha256") if "pixels_sha256" in e and rec else None
        byte_ok = sha256(path.read_bytes()) == e["sha256"] if "sha256" in e else None
        n_pix += bool(pix_ok)
        n_bytes += bool(byte_ok)
        fmt = {True: "same", False: "DIFF", None: "-"}
        line = f"{f:40s} {'x'.join(map(str, size)):>9s} {fmt[pix_ok]:>6s} {fmt[byte_ok]:>5s}"
        if compare:
            ref_path = compare / f
            if ref_path.is_file():
                with Image.open(ref_path) as rim:
                    ref = np.asarray(rim.convert("RGB"), dtype=np.int16)
                if ref.shape == dec.shape:
                    d = np.abs(dec - ref)
                    mad, mx = float(d.mean()), int(d.max())
                    worst = max(worst, mad)
                    n_cmp += 1
                    line += f" {mad:7.4f} {mx:4d}"
                else:
                    line += f" shape {ref.shape[1]}x{ref.shape[0]} != ours"
                    errors += 1
            else:
                line += "  (no reference file)"
        print(line + "  " + rec.get("source", "(not rebuilt in this run)"))
    n = len(expected)
    pix = f"{n_pix}/{n}" if records is not None else "not checked (--verify-only)"
    print(f"\n{len(present & expected)}/{n} files present; pixels identical to MANIFEST for {pix}, "
          f"JPEG bytes identical for {n_bytes}/{n}"
          + (f"; vs {compare}: {n_cmp} compared, worst mean abs diff {worst:.4f} (0-255 scale)" if compare else ""))
    if n_pix == n and n_bytes < n:
        print("(pixels match but JPEG bytes differ: a different libjpeg build in Pillow; harmless)")
    print(f"errors (file list / split / size): {errors}")
    return errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/photos",
                    help="output folder (train/ and dev/ go in it); default %(default)s")
    ap.add_argument("--manifest", default=str(HERE / "MANIFEST.json"), help="default: MANIFEST.json beside this script")
    ap.add_argument("--downloads", default="downloads",
                    help="where the .deb and the scipy wheel are fetched and unpacked; default %(default)s")
    ap.add_argument("--deb", help=f"a local {DEB_PACKAGE} {DEB_VERSION} .deb (skips apt-get download)")
    ap.add_argument("--wallpapers", help=f"an already unpacked {WALLPAPERS} folder (skips the .deb)")
    ap.add_argument("--scipy-wheel", help=f"a local scipy {SCIPY_VERSION} wheel (skips pip download)")
    ap.add_argument("--compare", help="a reference copy of the data set (holding train/ and dev/): report "
                                      "the pixel differences against it")
    ap.add_argument("--verify-only", action="store_true", help="do not build, only check --out")
    args = ap.parse_args(argv)

    manifest = json.loads(Path(args.manifest).read_text(encoding="utf-8"))
    out = Path(args.out)
    records: dict[str, dict] | None = None
    if not args.verify_only:
        records = {}
        print(f"building {len(manifest)} images into {out} ({versions()})", flush=True)
        state: dict = {}
        for e in manifest:
            try:
                src, where = load_source(e, args, state)
            except BuildError as err:
                print(f"ERROR {e['file']}: {err}", file=sys.stderr)
                continue
            img = process(src)
            dest = out / e["file"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(encode_jpeg(img, src.info.get("comment")))
            records[e["file"]] = {"pixels_sha256": pixels_sha256(img),
                                  "source": f"{where} {src.size[0]}x{src.size[1]}"}
            print(f"  {e['file']}  <- {where} ({src.size[0]}x{src.size[1]} {src.mode})", flush=True)
    print()
    errors = verify(out, manifest, records, Path(args.compare) if args.compare else None)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
