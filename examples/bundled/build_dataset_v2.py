#!/usr/bin/env python3
"""Rebuild imagetok-photos-v2 (``data/photos2/{train,dev}``), the data set of bundled model v2.

v2 = the 42 images of v1 (``build_dataset.py``, ``MANIFEST.json``; its 4 dev images stay dev) plus
photographs from four more packages. ``MANIFEST_v2.json`` lists every file with its source package
and version, licence, split, size and sha256 (JPEG bytes and RGB pixels).

New sources (Debian 12 bookworm packages, fetched with ``apt-get download`` and unpacked with
``dpkg -x``; each ``.deb``'s sha256 is checked):

- train/gcompris_*.jpg: ``gcompris-qt-data`` 3.1-2. The photographs inside the Qt resource files
  ``usr/share/gcompris-qt/rcc/<activity>.rcc`` of the activities in ``GCOMPRIS_RCC`` (animals,
  monuments, landscapes, tools, objects, fish, musicians, planets). Images are found by their JPEG /
  WebP signature in the .rcc file (Qt stores already-compressed images uncompressed) and kept if
  their shorter side is >= 200 px; named ``gcompris_<activity>_<byte offset>``.
- train/tuxpaint_*.jpg: ``tuxpaint-stamps-default`` 2022.06.04-1: the photographic stamps (PNG with
  alpha, > 4000 distinct colours among the opaque pixels: photos, not drawings), alpha-composited
  on white (product-photo style).
- train/opencv_*.jpg: ``opencv-doc`` 4.6.0+dfsg-12, the colour photographs in
  ``usr/share/doc/opencv-doc/examples/data`` listed in ``OPENCV_FILES``.
- dev/lomiri_*.jpg: ``lomiri-wallpapers-16.04`` 20.04.0-2, its 15 photographs. Dev only: no image
  of this package (or of v1's dev sources) is used for training.

Processing as in v1 (``build_dataset.process``): RGB, LANCZOS so the longer side is <= 1024 px,
JPEG quality 95.

Usage (from examples/bundled)::

    python build_dataset_v2.py                 # -> data/photos2/{train,dev}, downloads into ./downloads
    python build_dataset_v2.py --write-manifest   # (maintainers) record MANIFEST_v2.json from this build
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

import build_dataset as v1

HERE = Path(__file__).resolve().parent

# package -> (version, sha256 of the .deb as served by Debian bookworm, licence summary)
DEBS = {
    "gcompris-qt-data": ("3.1-2", None,
                         "GPL-3+ (package); per-activity image licences in debian/copyright: "
                         "GPL-3+, CC-BY-SA-4.0, public domain"),
    "tuxpaint-stamps-default": ("2022.06.04-1", None, "GPL-2"),
    "opencv-doc": ("4.6.0+dfsg-12", None, "Apache-2.0 AND BSD-3-Clause (OpenCV sample data)"),
    "lomiri-wallpapers-16.04": ("20.04.0-2", None,
                                "per file in debian/copyright: CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0, "
                                "author in the file name"),
}

GCOMPRIS_RCC = ["categorization", "chronos", "clickgame", "details", "digital_electricity", "erase",
                "explore_farm_animals", "explore_monuments", "explore_world_animals",
                "explore_world_music", "leftright", "louis-braille", "solar_system"]
TUXPAINT_MIN_COLOURS = 4000
OPENCV_FILES = ["aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png",
                "board.jpg", "box_in_scene.png", "building.jpg", "butterfly.jpg", "chicky_512.png",
                "ela_original.jpg", "fruits.jpg", "graf1.png", "home.jpg", "imageTextN.png",
                "leuvenA.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
                "rubberwhale1.png", "squirrel_cls.jpg", "stuff.jpg", "text_defocus.jpg"]


def fetch_unpack(pkg: str, downloads: Path, expected_sha: str | None) -> Path:
    version = DEBS[pkg][0]
    downloads.mkdir(parents=True, exist_ok=True)
    found = sorted(downloads.glob(f"{pkg}_*{version.split(':')[-1]}_*.deb"))
    if not found:
        cmd = ["apt-get", "download", f"{pkg}={version}"]
        print(f"$ (cd {downloads} && {' '.join(cmd)})", flush=True)
        subprocess.run(cmd, cwd=downloads, check=False)
        found = sorted(downloads.glob(f"{pkg}_*{version.split(':')[-1]}_*.deb"))
        if not found:
            raise v1.BuildError(f"`apt-get download {pkg}={version}` failed: run `apt-get update` "
                                "(Debian 12 bookworm) or put the .deb into --downloads")
    deb = found[0]
    digest = v1.sha256(deb.read_bytes())
    if expected_sha and digest != expected_sha:
        raise v1.BuildError(f"{deb}: sha256 {digest} != {expected_sha}")
    dest = downloads / pkg
    if not dest.is_dir():
        if shutil.which("dpkg"):
            subprocess.run(["dpkg", "-x", str(deb), str(dest)], check=True)
        else:
            raise v1.BuildError(f"dpkg is needed to unpack {deb}")
    return dest, digest


def gcompris_images(root: Path):
    rcc_dir = root / "usr/share/gcompris-qt/rcc"
    for act in GCOMPRIS_RCC:
        data = (rcc_dir / f"{act}.rcc").read_bytes()
        for m in re.finditer(rb"\xff\xd8\xff|RIFF....WEBP", data, re.S):
            try:
                im = Image.open(io.BytesIO(data[m.start():]))
                im.load()
            except Exception:  # a signature inside other data: not an image
                continue
            if min(im.size) < 200:
                continue
            yield f"gcompris_{act.replace('_', '-')}_{m.start()}", im, f"rcc/{act}.rcc@{m.start()}"


def tuxpaint_images(root: Path):
    stamps = root / "usr/share/tuxpaint/stamps"
    for p in sorted(stamps.rglob("*.png")):
        if p.name.endswith("_back.png"):
            continue
        with Image.open(p) as im:
            rgba = np.asarray(im.convert("RGBA"))
        opaque = rgba[..., 3] > 200
        rgb = rgba[opaque][:, :3].astype(np.int64)
        if len(np.unique(rgb @ np.array([65536, 256, 1]))) <= TUXPAINT_MIN_COLOURS:
            continue
        a = rgba[..., 3:4].astype(np.float32) / 255.0
        out = rgba[..., :3].astype(np.float32) * a + 255.0 * (1 - a)
        rel = p.relative_to(stamps)
        name = "tuxpaint_" + "-".join(rel.with_suffix("").parts).replace("_", "-")
        yield name, Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8)), f"stamps/{rel}"


def opencv_images(root: Path):
    d = root / "usr/share/doc/opencv-doc/examples/data"
    for f in OPENCV_FILES:
        with Image.open(d / f) as im:
            im.load()
            yield "opencv_" + Path(f).stem.replace("_", "-"), im, f"examples/data/{f}"


def lomiri_images(root: Path):
    for p in sorted((root / "usr/share/backgrounds").glob("*.jpg")):
        with Image.open(p) as im:
            im.load()
            yield "lomiri_" + p.stem.split("_by_")[0].replace("_", "-"), im, p.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/photos2")
    ap.add_argument("--downloads", default="downloads")
    ap.add_argument("--v1", default="data/photos", help="v1 data set (built by build_dataset.py if missing)")
    ap.add_argument("--write-manifest", action="store_true")
    args = ap.parse_args(argv)
    out, downloads = Path(args.out), Path(args.downloads)
    manifest_path = HERE / "MANIFEST_v2.json"
    recorded = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None

    v1_dir = Path(args.v1)
    if not (v1_dir / "train").is_dir():
        rc = v1.main(["--out", str(v1_dir), "--downloads", str(downloads)])
        if rc:
            return rc
    for split in ("train", "dev"):
        (out / split).mkdir(parents=True, exist_ok=True)

    files, debs = [], {}
    v1_manifest = {e["file"]: e for e in json.loads((HERE / "MANIFEST.json").read_text())}
    for rel, e in sorted(v1_manifest.items()):
        data = (v1_dir / rel).read_bytes()
        (out / rel).write_bytes(data)
        files.append({"file": rel, "split": e["split"], "source": e["source"], "license": e["license"],
                      "size": e["size"], "sha256": v1.sha256(data), "from": "v1 (build_dataset.py)"})

    gens = {"gcompris-qt-data": (gcompris_images, "train"), "tuxpaint-stamps-default": (tuxpaint_images, "train"),
            "opencv-doc": (opencv_images, "train"), "lomiri-wallpapers-16.04": (lomiri_images, "dev")}
    for pkg, (gen, split) in gens.items():
        version, _, lic = DEBS[pkg]
        expected = (recorded or {}).get("debs", {}).get(pkg)
        root, digest = fetch_unpack(pkg, downloads, expected)
        debs[pkg] = digest
        n = 0
        for name, im, where in gen(root):
            img = v1.process(im)
            jpeg = v1.encode_jpeg(img)
            rel = f"{split}/{name}.jpg"
            (out / rel).write_bytes(jpeg)
            files.append({"file": rel, "split": split, "source": f"Debian {pkg} {version}: {where}",
                          "license": lic, "size": list(img.size), "sha256": v1.sha256(jpeg),
                          "pixels_sha256": v1.pixels_sha256(img)})
            n += 1
        print(f"{pkg} {version}: {n} images -> {split}", flush=True)

    counts = {s: sum(f["split"] == s for f in files) for s in ("train", "dev")}
    print(f"total: {counts}")
    if args.write_manifest:
        manifest_path.write_text(json.dumps({"debs": debs, "counts": counts, "files": files}, indent=1) + "\n")
        print(f"wrote {manifest_path}")
        return 0
    if recorded is None:
        print("no MANIFEST_v2.json to verify against", file=sys.stderr)
        return 1
    want = {f["file"]: f for f in recorded["files"]}
    got = {f["file"]: f for f in files}
    bad = sorted(set(want) ^ set(got))
    sizes = [k for k in want.keys() & got.keys() if want[k]["size"] != got[k]["size"]]
    same = sum(want[k]["sha256"] == got[k]["sha256"] for k in want.keys() & got.keys())
    print(f"verify: {len(got)} files, {len(bad)} missing/extra, {len(sizes)} size mismatches, "
          f"{same} byte-identical JPEGs")
    return 1 if bad or sizes else 0


if __name__ == "__main__":
    sys.exit(main())
