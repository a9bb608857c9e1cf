"""The commands that index, serve and administer: ingest, reindex, delete, documents, serve, worker, keys, serve-llm."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from ragtune.cli.common import UsageError, app, keys_app, load_settings, open_system, print_json


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to index.")],
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="Tag the documents (repeatable).")] = None,
    meta: Annotated[
        list[str] | None,
        typer.Option(
            "--meta",
            "-m",
            help="Metadata key=value for every document (repeatable; numbers and true/false are typed); "
            "it overrides a Markdown file's front matter.",
        ),
    ] = None,
    collection: Annotated[
        str | None,
        typer.Option(help="The collection to index into (created on first use); default RAGTUNE_COLLECTION."),
    ] = None,
    shard: Annotated[str | None, typer.Option(help="Index only shard i of N (i/N), for parallel jobs.")] = None,
    prune: Annotated[bool, typer.Option(help="Remove documents whose files left an ingested folder.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
    follow_links: Annotated[
        bool,
        typer.Option(
            "--follow-links",
            help="In folders, follow symbolic links to files and folders outside them (off: such links are skipped).",
        ),
    ] = False,
) -> None:
    """Index files: unchanged ones are skipped, changed ones replaced, failures recorded.

    FIFOs, sockets and devices are never read; they are reported as failed.
    """
    from ragtune.ingest.indexer import parse_shard
    from ragtune.types import Labels, check_collection, check_metadata, check_tags, parse_meta_pair

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or directory: {', '.join(missing)}")
    try:
        shard_spec = parse_shard(shard) if shard else None
        metadata = check_metadata(dict(parse_meta_pair(pair) for pair in meta or ()))
        labels = Labels(check_collection(collection) if collection else "", check_tags(tag or ()), metadata)
    except ValueError as exc:  # TagError and MetadataError are ValueErrors
        raise UsageError(str(exc)) from None
    with open_system(load_settings()) as system:
        report = system.ingestor.ingest_paths(paths, labels, shard_spec, prune, follow_links=follow_links)
        counts = system.catalog.counts()
    if as_json:
        print_json(asdict(report) | {"catalog": counts})
    else:
        for source, error in report.failed:
            typer.echo(f"failed: {source}: {error}", err=True)
        typer.echo(f"{report.summary()}; the index holds {counts['indexed']} documents, {counts['chunks']} chunks")
    if report.failed and not report.indexed and not report.unchanged:
        raise typer.Exit(1)


@app.command()
def reindex() -> None:
    """Re-embed every stored chunk with the configured embedder (after changing its model or backend).

    The chunks are re-embedded into a new Milvus collection, which replaces the live one once it
    holds every chunk; until then searches use the old vectors. A stopped run continues where it
    stopped when started again with the same embedder.
    """
    from ragtune.ingest.reembed import reindex as reindex_store
    from ragtune.system import build

    with build(load_settings(), generator=False, check_vectors=False) as system:
        report = reindex_store(system.catalog, system.store, system.embedder)
    typer.echo(report.summary())


@app.command("upgrade-store")
def upgrade_store() -> None:
    """Bring a Milvus server's collection from before collections and metadata up to date
    (Milvus Lite data is upgraded on its own). Stop every other ragtune process using it first."""
    from ragtune.embed import build_embedder
    from ragtune.system import open_store

    settings = load_settings()
    embedder = build_embedder(settings.embedding, settings.resolved_embedder_cache())
    store = open_store(settings, embedder.dimension, upgrade_server=True)
    rows = store.count()
    store.close()
    typer.echo(f"{settings.store.collection!r} is up to date ({rows} chunks)")


@app.command()
def delete(
    sources: Annotated[list[str], typer.Argument(help="Document sources (paths) or ids.")],
    collection: Annotated[
        str | None, typer.Option(help="The collection of the sources named; default RAGTUNE_COLLECTION.")
    ] = None,
) -> None:
    """Remove documents and their chunks from the index."""
    with open_system(load_settings()) as system:
        unknown = [
            s
            for s in sources
            if not system.ingestor.delete(str(Path(s).resolve()) if Path(s).exists() else s, collection or "")
        ]
    for source in unknown:
        typer.echo(f"not in the index: {source}", err=True)
    typer.echo(f"deleted {len(sources) - len(unknown)} document(s)")
    if unknown:
        raise typer.Exit(1)


@app.command()
def documents(
    status: Annotated[str | None, typer.Option(help="Only this status: pending, indexed or failed.")] = None,
    collection: Annotated[list[str] | None, typer.Option(help="Only these collections (repeatable).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 50,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List indexed documents with their status and errors."""
    from ragtune.store.catalog import FAILED, INDEXED, PENDING
    from ragtune.system import open_catalog

    if status not in (None, PENDING, INDEXED, FAILED):
        raise UsageError(f"--status must be pending, indexed or failed; got {status!r}")
    catalog = open_catalog(load_settings())
    rows, total = catalog.list(offset, limit, status, tuple(collection or ()))
    if as_json:
        print_json({"total": total, "documents": [asdict(r) for r in rows]})
        return
    for r in rows:
        line = f"{r.status:8} {r.chunks:5} chunks  {r.collection}: {r.source}"
        typer.echo(line + (f"\n         error: {r.error}" if r.error else ""))
    typer.echo(f"{len(rows)} of {total} document(s)")


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (RAGTUNE_HOST; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (RAGTUNE_PORT; default 8000).")] = None,
) -> None:
    """Run the HTTP API and the web UI (uvicorn); ingestion jobs run in a worker thread."""
    import uvicorn

    from ragtune.api.app import create_app

    settings = load_settings(host=host, port=port)
    _configure_logging()
    service = settings.service
    typer.echo(f"ragtune serves http://{service.host}:{service.port}/ (UI), /docs (API); Ctrl+C stops it", err=True)
    uvicorn.run(create_app(settings), host=service.host, port=service.port, log_level="info", access_log=False)


@app.command()
def worker(
    once: Annotated[bool, typer.Option("--once", help="Process the queued jobs, then exit.")] = False,
) -> None:
    """Process ingestion jobs from the shared catalog; run several beside the API to scale out.

    Needs a catalog and a Milvus server shared with `ragtune serve` (RAGTUNE_CATALOG_URL=
    postgresql://…, RAGTUNE_MILVUS_URI=http://…), and RAGTUNE_EMBEDDED_WORKER=false there."""
    import signal
    import threading

    from ragtune.api.readiness import StoreProbe
    from ragtune.ingest.worker import Worker
    from ragtune.store.base import is_server_uri
    from ragtune.store.jobs import JobQueue

    settings = load_settings()
    if not is_server_uri(settings.resolved_milvus_uri()):
        typer.echo(
            "warning: RAGTUNE_MILVUS_URI is a Milvus Lite path, which one process may open: "
            "this worker cannot run beside `ragtune serve` on the same data; use a Milvus server",
            err=True,
        )
    _configure_logging()
    with open_system(settings) as system:
        probe = StoreProbe(settings.resolved_milvus_uri())
        job_worker = Worker(system.ingestor, JobQueue(system.catalog), settings.service, store_ready=probe.check)
        if once:
            processed = 0
            while job_worker.run_once():
                processed += 1
            typer.echo(f"processed {processed} job(s)", err=True)
            return
        stop = threading.Event()

        def _stop(*_: object) -> None:
            stop.set()
            job_worker.wake()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        job_worker.run(stop)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for (e.g. ci, grafana).")] = "",
    role: Annotated[
        str, typer.Option(help="reader (ask, list), writer (also upload, delete) or admin (also manage keys).")
    ] = "admin",
    collections: Annotated[
        str, typer.Option(help="Comma-separated collections the key may use (default: every collection).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Make a key; it is printed once and only its hash is stored."""
    from ragtune.store.keys import check_collections, check_role

    try:
        check_role(role)
        names = check_collections(collections.split(","))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    created = _key_store().create(name, role, names)
    if as_json:
        print_json(
            {
                "id": created.key.id,
                "name": created.key.name,
                "role": created.key.role,
                "collections": list(created.key.collections),
                "key": created.secret,
            }
        )
        return
    typer.echo(created.secret)
    scope = f"{role} on {', '.join(names) if names else 'every collection'}"
    typer.echo(f"key {created.key.id} ({name or 'unnamed'}, {scope}): store it now, it cannot be shown again", err=True)


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List keys (id, name, first characters, role, collections, created, revoked); never the keys themselves."""
    keys = _key_store().list()
    if as_json:
        print_json([asdict(k) for k in keys])
        return
    for k in keys:
        revoked = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        collections = ",".join(k.collections) or "*"
        typer.echo(
            f"{k.id}  {k.hint:10}  {k.created_at:%Y-%m-%d %H:%M}  {revoked:24}  {k.role:6}  {collections:20}  {k.name}"
        )
    typer.echo(f"{len(keys)} key(s); collections * = every collection")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The id shown by `ragtune keys list`.")]) -> None:
    """Revoke a key; a running server refuses it within seconds."""
    try:
        key = _key_store().revoke(key_id)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    typer.echo(f"revoked key {key.id} ({key.name or 'unnamed'})")


def _key_store():  # -> KeyStore
    from ragtune.store.keys import KeyStore
    from ragtune.system import open_catalog

    return KeyStore(open_catalog(load_settings()))


@app.command("serve-llm")
def serve_llm(
    model: Annotated[
        str | None, typer.Option(help="HF model directory or .gguf file (RAGTUNE_LLM_MODEL; default SmolLM2).")
    ] = None,
    adapter: Annotated[str | None, typer.Option(help="PEFT LoRA adapter directory (RAGTUNE_LLM_ADAPTER).")] = None,
    quant: Annotated[str | None, typer.Option(help="none, nf4 or int8 (RAGTUNE_LLM_QUANT).")] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model id clients send (default: the model's name).")
    ] = None,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port (RAGTUNE_LLM_BASE_URL's default uses 8001).")
    ] = 8001,
) -> None:
    """Serve the local LLM as an OpenAI-compatible API (/v1/chat/completions, /v1/models)."""
    import uvicorn

    from ragtune.generate.local import LocalLM
    from ragtune.generate.server import create_llm_app
    from ragtune.models import ModelNotFoundError

    settings = load_settings(llm_model=model, llm_adapter=adapter, llm_quant=quant)
    llm = settings.llm
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    _configure_logging()
    try:
        lm = LocalLM.load(llm.model, llm.adapter, llm.quant, tensor_parallel=llm.tensor_parallel)
    except (ModelNotFoundError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    app_ = create_llm_app(lm, served_model_name, llm.max_new_tokens)
    name = served_model_name or lm.name
    typer.echo(f"serving {name!r} ({lm.device}) at http://{host}:{port}/v1; Ctrl+C stops it", err=True)
    uvicorn.run(app_, host=host, port=port, log_level="info", access_log=False)
