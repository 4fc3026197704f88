"""Hugging Face Hub I/O: download weights (checked, converted once, cached) and publish models.

The only module that imports ``huggingface_hub``, and only inside functions, so ``import imagetok``
stays light. Every download goes through :func:`download`, which calls ``hf_hub_download`` tagged
``library_name="imagetok"``; files land in the standard HF cache (``HF_HOME`` / ``HF_HUB_CACHE``,
or ``cache_dir``) and ``HF_HUB_OFFLINE=1`` works as in every HF library.

Integrity: when the manifest gives a sha256, the file is hashed after every download *and* on
every cache hit. A mismatch raises :class:`~imagetok.errors.ChecksumError` naming the path and
both hashes, and the file is deleted from the cache (blob and snapshot link) so a corrupt copy is
never served again.

Checkpoints in other formats (taming ``.ckpt``, LlamaGen ``.pt``, diffusers...) are converted once
with :func:`imagetok.convert.convert` and the result is cached as an imagetok folder under
``<HF_HOME or cache_dir>/imagetok-converted/<name>/<commit>/``; later loads read that folder.

This module is transport only: :func:`resolve` turns a name into a local model folder and never
builds a model (that is :meth:`imagetok.Tokenizer.from_pretrained`'s job), so it does not import
the tokenizer.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from . import registry
from .card import model_card
from .config import config_hash, config_to_dict
from .errors import (
    ChecksumError,
    ConfigError,
    ConversionError,
    HubError,
    ImagetokError,
    InputError,
    UnknownModelError,
    WeightsError,
)
from ._version import __version__
from .serialization import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, file_sha256, load_folder, read_json, save_folder

logger = logging.getLogger(__name__)

LIBRARY_NAME = "imagetok"
CONVERTED_DIR = "imagetok-converted"
MARKER_NAME = "imagetok-source.json"


class _MissingFile(HubError):
    """The repo and revision exist but the file does not (internal: callers word the message)."""


def _hf():
    try:
        import huggingface_hub
    except ImportError:  # pragma: no cover - a declared dependency
        raise HubError("huggingface_hub is not installed; run `pip install huggingface_hub`") from None
    return huggingface_hub


# --------------------------------------------------------------------------------- download
def download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> Path:
    """Fetch one file of a Hub model repo into the HF cache (or find it there) and return its path.

    Args:
        repo_id: ``"org/name"``.
        filename: path inside the repo.
        revision: branch, tag or commit; None for the default branch.
        cache_dir: cache root instead of ``HF_HUB_CACHE``.
        sha256: expected hex digest; checked on download and on cache hits.

    Raises:
        HubError: repo, revision or file not found, network down, offline mode without a cached copy.
        ChecksumError: the file's sha256 differs (the file has been removed from the cache).
    """
    hf = _hf()
    from huggingface_hub import constants
    from huggingface_hub import errors as hfe

    where = f"{repo_id}/{filename}" + (f" (revision {revision})" if revision else "")
    try:
        path = hf.hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
            library_name=LIBRARY_NAME,
            library_version=__version__,
        )
    except hfe.RevisionNotFoundError:
        raise HubError(
            f"revision {revision!r} does not exist in Hub repo {repo_id!r}; pass an existing branch, tag or "
            f"commit id (branches: {_branches(repo_id)})"
        ) from None
    except hfe.RepositoryNotFoundError:  # also GatedRepoError
        raise HubError(
            f"Hub repo {repo_id!r} not found, or it is private/gated and this machine is not logged in "
            "(`hf auth login` or HF_TOKEN); it is not a local folder either"
        ) from None
    except (hfe.LocalEntryNotFoundError, hfe.OfflineModeIsEnabled) as e:
        cache = cache_dir or constants.HF_HUB_CACHE
        if _offline(constants):
            raise HubError(
                f"offline mode is on (HF_HUB_OFFLINE=1) and {where} is not in the cache {cache}; unset "
                f"HF_HUB_OFFLINE to download it, or fill the cache on a connected machine (`hf download {repo_id} {filename}`)"
            ) from None
        raise HubError(
            f"could not reach the Hugging Face Hub at {constants.ENDPOINT} to download {where}, and it is not in "
            f"the cache {cache} ({_cause(e)}). Check the network (or HF_ENDPOINT); to work offline, download it once "
            "on a connected machine and set HF_HUB_OFFLINE=1"
        ) from None
    except _remote_entry_error(hfe):
        raise _MissingFile(f"Hub repo {repo_id!r} has no file {filename!r}" + (f" at revision {revision!r}" if revision else "")) from None
    except hfe.HfHubHTTPError as e:
        raise HubError(f"the Hub refused the download of {where}: {_first_line(e)}") from None
    except Exception as e:  # network errors raised by the HTTP client while streaming
        if _is_network_error(e):
            raise HubError(
                f"network error while downloading {where} from {constants.ENDPOINT}: {type(e).__name__}: {e}. "
                "Retry, or set HF_HUB_OFFLINE=1 to use only cached files"
            ) from None
        raise
    if sha256 is not None:
        verify_sha256(path, sha256, evict=True)
    return Path(path)


def _offline(constants: Any) -> bool:
    is_offline = getattr(constants, "is_offline_mode", None)  # huggingface_hub >= 1.0
    return bool(is_offline() if is_offline else constants.HF_HUB_OFFLINE)


def _remote_entry_error(hfe: Any) -> type:
    # huggingface_hub >= 1.0 splits remote and local misses; before, LocalEntryNotFoundError (caught
    # first above) subclassed EntryNotFoundError
    return getattr(hfe, "RemoteEntryNotFoundError", hfe.EntryNotFoundError)


def verify_sha256(path: str | os.PathLike, expected: str, *, evict: bool = False) -> None:
    """Raise ChecksumError unless ``path`` hashes to ``expected``.

    Args:
        evict: delete the bad file from the HF cache (the snapshot link and the blob it points to)
            so that the next download fetches it anew instead of trusting the corrupt copy.
    """
    actual = file_sha256(path)
    if actual == expected.lower():
        return
    removed = ""
    if evict:
        _evict(Path(path))
        removed = " The corrupt file was removed from the cache; loading again downloads it anew."
    raise ChecksumError(
        f"{path}: sha256 mismatch: expected {expected.lower()}, got {actual}. The file is corrupt, truncated "
        f"or not the published one, and was not used.{removed}"
    )


def _evict(path: Path) -> None:
    blob = Path(os.path.realpath(path))
    for p in {path, blob}:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # pragma: no cover - permissions
            logger.warning("could not remove %s from the cache: %s", p, e)


def _commit_of(path: Path) -> str | None:
    """The commit id of a file inside an HF cache snapshot folder (``.../snapshots/<commit>/...``)."""
    for parent in path.parents:
        if parent.parent.name == "snapshots":
            return parent.name
    return None


def _branches(repo_id: str) -> str:
    try:
        refs = _api().list_repo_refs(repo_id)
        return ", ".join(sorted(b.name for b in refs.branches)) or "none"
    except Exception:  # noqa: BLE001 - best effort: only used to enrich an error message
        return "unknown"


def _repo_files(repo_id: str, revision: str | None) -> list[str] | None:
    try:
        return sorted(_api().list_repo_files(repo_id, revision=revision))
    except Exception:  # noqa: BLE001 - best effort: only used to enrich an error message
        return None


def _api(token: str | bool | None = None):
    hf = _hf()
    return hf.HfApi(library_name=LIBRARY_NAME, library_version=__version__, token=token)


def _is_network_error(e: BaseException) -> bool:
    """Network failures (not local disk problems such as a full or read-only HF cache)."""
    mod = type(e).__module__ or ""
    if isinstance(e, (ConnectionError, TimeoutError)) or mod.startswith(("httpx", "httpcore", "h11", "urllib3", "requests")):
        return True
    local = (PermissionError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
    return isinstance(e, OSError) and not isinstance(e, local) and e.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)


def _cause(e: BaseException) -> str:
    c = e.__cause__ or e.__context__
    return f"{type(c).__name__}: {c}" if c is not None else _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# --------------------------------------------------------------------------------- resolve
def resolve(
    name_or_ref: str | os.PathLike | registry.ModelRef,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Turn a model name into a local model folder: download, sha256 check and conversion included.

    Args:
        name_or_ref: a name as :func:`imagetok.registry.parse_name` reads it (manifest name,
            ``hf-hub:org/repo[@revision]``, ``org/repo``, ``local-dir:PATH`` or a path), or the
            :class:`~imagetok.registry.ModelRef` it returned.
        revision: Hub branch, tag or commit (not together with a different ``@revision`` in the name).
        cache_dir: cache root instead of the HF cache.

    Returns:
        A folder holding ``config.json`` and ``model.safetensors`` (or, when the weights have another
        file name, that ``.safetensors`` file with ``config.json`` beside it). Nothing is built or
        validated beyond the JSON syntax of the config and the weights' sha256 when the manifest
        gives one: the caller (e.g. :meth:`imagetok.Tokenizer.from_pretrained`) loads it strictly.
        Every spelling of a manifest model (its full name, its arch alone) gets the same checks.

    Raises:
        UnknownModelError: the name is unknown (the message lists the closest manifest names).
        HubError, ChecksumError, ConfigError, WeightsError, ConversionError: see :func:`download`.
    """
    ref = name_or_ref if isinstance(name_or_ref, registry.ModelRef) else registry.parse_name(name_or_ref)
    if ref.kind == "local":
        path = ref.path
        if path is None or not path.exists():
            raise UnknownModelError(f"{path}: no such model folder")
        if path.is_file() and path.suffix != ".safetensors":
            raise WeightsError(
                f"{path}: not an imagetok model (a folder with config.json and {WEIGHTS_NAME}, or a .safetensors "
                f"file); convert checkpoints from other libraries with `imagetok convert {path} --from FORMAT --out DIR`"
            )
        return path
    if ref.kind == "hub":
        if revision is not None and ref.revision is not None and revision != ref.revision:
            raise InputError(f"two revisions given for {ref.name!r}: {ref.revision!r} in the name and revision={revision!r}")
        return resolve_repo(ref.repo_id, revision=revision or ref.revision, cache_dir=cache_dir)
    return resolve_entry(ref.entry, revision=revision, cache_dir=cache_dir)


def revision_of(path: str | os.PathLike) -> str | None:
    """The Hub commit a resolved model folder came from (an HF cache snapshot or a converted copy),
    or None for local and bundled folders."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    marker = folder / MARKER_NAME
    if marker.is_file():
        try:
            commit = json.loads(marker.read_text()).get("commit")
            return commit if isinstance(commit, str) else None
        except (OSError, ValueError, AttributeError):
            return None
    return _commit_of(folder / CONFIG_NAME)


def resolve_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    weights_name: str = WEIGHTS_NAME,
    sha256: str | None = None,
) -> Path:
    """Download an imagetok model repo (``config.json`` + ``model.safetensors``, as written by
    :meth:`Tokenizer.push_to_hub`) into the HF cache, or find it there; returns its local folder.

    Args:
        weights_name: path of the weights in the repo; ``config.json`` is read from its folder.
        sha256: expected digest of the weights file.
    """
    folder = _posix_dirname(weights_name)
    config_name = f"{folder}/{CONFIG_NAME}" if folder else CONFIG_NAME
    try:
        config_path = download(repo_id, config_name, revision=revision, cache_dir=cache_dir)
    except _MissingFile:
        files = _repo_files(repo_id, revision)
        listing = f"it holds {files}" if files is not None else "its file list could not be read"
        raise HubError(
            f"Hub repo {repo_id!r} has no {config_name}, so it is not an imagetok model ({listing}). An imagetok "
            f"repo holds config.json and {WEIGHTS_NAME} (publish one with `imagetok push DIR {repo_id}`); "
            "checkpoints in other formats go through `imagetok convert`"
        ) from None
    read_json(config_path)  # a clear error before downloading the weights; the caller validates it
    commit = _commit_of(config_path)
    try:  # read the weights from the same commit as the config
        weights_path = download(repo_id, weights_name, revision=commit or revision, cache_dir=cache_dir, sha256=sha256)
    except _MissingFile:
        raise HubError(f"Hub repo {repo_id!r} has {config_name} but no {weights_name}; re-upload the model folder") from None
    if weights_path.parent != config_path.parent:  # pragma: no cover - both in the same snapshot folder
        raise HubError(f"{repo_id}: {weights_name} and {config_name} come from different folders")
    return weights_path.parent if weights_path.name == WEIGHTS_NAME else weights_path


def _posix_dirname(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def resolve_entry(
    entry: registry.ManifestEntry, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local folder of a manifest entry's weights (downloading and converting them if needed).
    The bundled model's weights are checked against the manifest's sha256 on every call."""
    src = entry.source
    if src.kind == "bundled":
        if not (registry.BUNDLED_DIR / CONFIG_NAME).is_file():
            raise UnknownModelError(f"{entry.name}: this imagetok install has no bundled model folder {registry.BUNDLED_DIR}")
        if src.sha256:
            verify_sha256(registry.BUNDLED_DIR / WEIGHTS_NAME, src.sha256)
        return registry.BUNDLED_DIR
    if src.kind == "url":
        raise HubError(
            f"{entry.name}: its weights are not on the Hugging Face Hub, so imagetok cannot fetch them. Download "
            f"{src.filename!r} from {src.url}, convert it with `imagetok convert FILE --from {src.converter} --out DIR` "
            f"and load DIR (or publish DIR with `imagetok push`)"
        )
    rev = revision or src.revision
    # the manifest's sha256 describes the manifest's revision only
    sha = src.sha256 if revision is None or revision == src.revision else None
    if revision is not None and sha is None and src.sha256:
        logger.warning("%s: revision %s overrides the manifest's; its sha256 is not checked", entry.name, revision)
    if src.format == "imagetok":
        return resolve_repo(src.repo_id, revision=rev, cache_dir=cache_dir, weights_name=src.filename, sha256=sha)
    return _resolve_converted(entry, rev, sha, cache_dir)


def converted_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted checkpoints are cached: ``<cache_dir or HF_HOME>/imagetok-converted``."""
    if cache_dir is not None:
        return Path(cache_dir) / CONVERTED_DIR
    _hf()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / CONVERTED_DIR


def _resolve_converted(
    entry: registry.ManifestEntry, revision: str | None, sha256: str | None, cache_dir: str | os.PathLike | None
) -> Path:
    src = entry.source
    root = converted_root(cache_dir) / entry.name
    if revision and registry.COMMIT_RE.match(revision):  # pinned: no need to look at the original file
        if _converted_ok(root / revision, entry):
            return root / revision
    try:
        original = download(src.repo_id, src.filename, revision=revision, cache_dir=cache_dir, sha256=sha256)
    except ChecksumError:
        raise
    except HubError:
        # offline or unreachable, original not cached: an earlier conversion is still good to use
        folder = None if revision else _newest_converted(root, entry)
        if folder is None:
            raise
        return folder
    commit = _commit_of(original) or file_sha256(original)[:40]
    folder = root / commit
    if _converted_ok(folder, entry):
        return folder
    return _convert_into(original, folder, entry, commit)


def _newest_converted(root: Path, entry: registry.ManifestEntry) -> Path | None:
    folders = sorted((p for p in root.glob("*") if (p / MARKER_NAME).is_file()), key=lambda p: p.stat().st_mtime, reverse=True)
    for folder in folders:
        if _converted_ok(folder, entry):
            logger.warning("%s: the Hub could not be asked for updates; using the converted copy in %s", entry.name, folder)
            return folder
    return None


def _converted_ok(folder: Path, entry: registry.ManifestEntry) -> bool:
    """Whether ``folder`` holds a complete, uncorrupted conversion for ``entry`` (else it is removed)."""
    marker = folder / MARKER_NAME
    if not marker.is_file():
        if folder.exists():  # an interrupted conversion
            shutil.rmtree(folder, ignore_errors=True)
        return False
    try:
        info = json.loads(marker.read_text())
        actual = file_sha256(folder / WEIGHTS_NAME)
        ok = actual == info.get("weights_sha256") and info.get("config_hash") == config_hash(entry.config)
    except (OSError, ValueError, AttributeError):
        ok, actual, info = False, None, {}
    if not ok:
        logger.warning(
            "converted copy of %s in %s is corrupt or stale (weights sha256 %s, recorded %s); converting again",
            entry.name, folder, actual, info.get("weights_sha256") if isinstance(info, dict) else None,
        )
        shutil.rmtree(folder, ignore_errors=True)
    return ok


def _convert_into(original: Path, folder: Path, entry: registry.ManifestEntry, commit: str) -> Path:
    src = entry.source
    from . import convert as _convert

    logger.info("converting %s (%s, %s) once; cached in %s", entry.name, src.converter, original, folder)
    try:
        conv = _convert.convert(str(original), from_format=src.converter, config=config_to_dict(entry.config), use_ema=src.use_ema)
    except ConversionError as e:
        raise ConversionError(
            f"{entry.name}: converting {original} failed: {e}. To convert by hand: "
            f"`imagetok convert {original} --from {src.converter} --out DIR`, then load DIR"
        ) from None
    if conv.config != entry.config:
        raise ConfigError(
            f"converted {original}: its config does not match the manifest entry {entry.name!r} "
            f"(hash {config_hash(conv.config)} vs {config_hash(entry.config)}); the repo changed since the manifest was written"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        state = {k: v.float() if v.is_floating_point() else v for k, v in conv.state_dict.items()}
        card = model_card(entry.name, conv.config, **entry.card_kwargs())
        save_folder(tmp, config_to_dict(conv.config), state, card=card)
        info = {
            "name": entry.name,
            "repo_id": src.repo_id,
            "filename": src.filename,
            "commit": commit,
            "converter": src.converter,
            "source_sha256": file_sha256(original),
            "weights_sha256": file_sha256(tmp / WEIGHTS_NAME),
            "config_hash": config_hash(entry.config),
            "imagetok_version": __version__,
        }
        (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first; keep its copy
            if not (folder / MARKER_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------ push
def push_to_hub(
    tok: Any,
    repo_id: str,
    *,
    branch: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
    card: dict[str, Any] | None = None,
) -> str:
    """Upload ``tok`` (a :class:`~imagetok.Tokenizer`) as ``config.json`` + ``model.safetensors`` +
    ``README.md`` model card.

    Args:
        repo_id: ``"org/name"``; created if missing (``private`` applies only then).
        branch: commit to this branch (created from main if missing); default main.
        create_pr: open a pull request against main instead of committing to it.
        commit_message: default "Upload imagetok model".
        token: Hub token; default: HF_TOKEN or the stored login.
        card: :func:`imagetok.card.model_card` keyword arguments (license, datasets, metrics,
            citation...); defaults to the manifest entry's when ``tok.name`` is a manifest name.

    Returns:
        The URL of the commit, or of the pull request with ``create_pr``.
    """
    if card is None and tok.name in registry.load_manifest():
        card = registry.load_manifest()[tok.name].card_kwargs()
    with tempfile.TemporaryDirectory(prefix="imagetok-push-") as tmp:
        folder = tok.save_pretrained(tmp, card=card)
        (folder / CARD_NAME).write_text(model_card(f"hf-hub:{repo_id}", tok.config, **(card or {})))
        return push_folder(
            folder, repo_id, branch=branch, private=private, create_pr=create_pr, commit_message=commit_message, token=token
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    branch: str | None = None,
    private: bool | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload a saved model folder (``config.json``, ``model.safetensors``, optional ``README.md``).

    The folder is loaded first (strictly), so a broken model is never published. Without a
    README.md a model card is generated. Other files in the folder are not uploaded.
    Arguments as in :func:`push_to_hub`.

    Raises:
        ConfigError, WeightsError: the folder is not a valid imagetok model.
        InputError: ``branch`` together with ``create_pr``, or a malformed repo id.
        HubError: the Hub refused (not logged in, no write access...) or could not be reached.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder (expected a model folder with config.json and {WEIGHTS_NAME})")
    if not registry.REPO_ID_RE.match(repo_id):
        raise InputError(f"repo id must look like 'org/name', got {repo_id!r}")
    if branch and create_pr:
        raise InputError("pass either branch or create_pr: pull requests are opened against main")
    loaded = load_folder(folder)  # validates config and weights
    card_path = folder / CARD_NAME
    card = card_path.read_bytes() if card_path.is_file() else model_card(f"hf-hub:{repo_id}", loaded.config).encode()

    _hf()
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub import errors as hfe

    api = _api(token)
    ops = [
        CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
        CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
        CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card),
    ]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations=ops,
            commit_message=commit_message or "Upload imagetok model",
            revision=branch,
            create_pr=create_pr,
        )
    except hfe.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = " (log in with `hf auth login` or set HF_TOKEN to a token with write access)" if status in (401, 403) else ""
        raise HubError(f"pushing to Hub repo {repo_id!r} failed: {_first_line(e)}{hint}") from None
    except ImagetokError:
        raise
    except Exception as e:
        if _is_network_error(e):
            from huggingface_hub import constants

            raise HubError(f"could not reach the Hugging Face Hub at {constants.ENDPOINT} to push {repo_id!r}: {e}") from None
        raise
    return str(info.pr_url or info.commit_url)
