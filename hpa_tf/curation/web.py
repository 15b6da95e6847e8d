"""The curators' web page (`python infer.py --serve`): search an image or pick one from a review queue or
the noise report; see its RGBY composite and channels, its nearest annotated images, the classifier's
prediction against the known labels (read from the submission's or the validation's probabilities, else
predicted once and cached) with a Grad-CAM map of each predicted label (loaded after the page); accept or
edit the label set, appended to the corrections CSV. FastAPI + Jinja2 pages rendered on the server, served
by uvicorn on 127.0.0.1 by default (elsewhere only with the access token)."""

from __future__ import annotations

import getpass
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode, urlparse

import numpy as np
import pandas as pd
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from hpa_tf import viz
from hpa_tf.config import InferenceConfig
from hpa_tf.curation.access import access_token, cookie_name, presented_token, start_urls, token_accepted
from hpa_tf.curation.corrections import append_correction, parse_labels, read_corrections
from hpa_tf.curation.explain import Explanations
from hpa_tf.curation.gallery import load_thumbnail, read_image
from hpa_tf.curation.pool import (
    AnnotatedPool,
    Query,
    cached_test_space,
    find_query,
    nearest_annotated,
    open_pool,
)
from hpa_tf.curation.predictions import ImagePredictions
from hpa_tf.curation.queues import (
    TITLES,
    ReviewQueue,
    neighbours_in_queue,
    noise_queue,
    page_bounds,
    replaced_queue,
    uncertain_queue,
)
from hpa_tf.curation.report import label_noise_report
from hpa_tf.errors import DataError, HpaTfError, InferenceError
from hpa_tf.inference.runs import TrainedRuns
from hpa_tf.labels import LABEL_NAMES, NUM_CLASSES, parse_target, targets_to_matrix
from hpa_tf.layout import COLORS, RunLayout, validate_id

log = logging.getLogger(__name__)
TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
VIEWS = ("composite", *COLORS)  # the image views a page shows
REPORT_COLUMNS = ["rank", "Id", "set", "Target", "majority", "disagreement", "neighbours"]
REPORT_PAGE = 200  # noise-report rows per page (the report has a row per annotated image)
QUEUE_PAGE = 50  # review-queue rows per page
QUEUE_PREVIEW = 5  # rows of each queue on the front page
LOCAL_HOSTS = ["127.0.0.1", "localhost"]


@dataclass
class Curation:
    """What the pages read: the runs, the annotated pool, the predictions and their explanations, the
    noise report (computed on first use) and where decisions go."""

    config: InferenceConfig
    runs: TrainedRuns
    embedder: RunLayout
    pool: AnnotatedPool
    corrections: Path
    curator: str
    predictions: ImagePredictions
    explanations: Explanations
    _report: pd.DataFrame | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def report(self) -> pd.DataFrame:
        with self.lock:
            if self._report is None:
                self._report, _ = label_noise_report(self.pool, self.config.noise_neighbours,
                                                     self.config.noise_similarity, progress=False)
            return self._report

    @property
    def report_ready(self) -> bool:
        """Whether the noise report is computed (the front page does not wait for it)."""
        return self._report is not None

    def query(self, image_id: str) -> Query:
        """The image (its Id checked first: nothing but letters, digits, '-' and '_')."""
        return find_query(self.pool, self.embedder.root, self.runs.data, validate_id(image_id))

    def queue(self, name: str) -> ReviewQueue:
        """A review queue by name, read afresh from the submission's files (the noise queue computes the
        report on first use); DataError for an unknown name."""
        if name not in TITLES:
            raise DataError(f"no review queue {name!r}: one of {list(TITLES)}")
        if name == "noise":
            return noise_queue(self.report)
        return (replaced_queue if name == "replaced" else uncertain_queue)(self.config.output)

    def warm(self) -> None:
        """Read and standardise the test set and read the probability files before the first request, so
        that the first image page answers as fast as the next ones (at Kaggle's 11,702 test images the
        test set alone took 0.1-0.5 s on 2 cores); a damaged file is left for the pages to report."""
        path = self.embedder.embeddings("test")
        if path.is_file():
            try:
                cached_test_space(path)
            except HpaTfError as error:
                log.warning(f"{error}: the test images' pages will say so")
        self.predictions.load()  # a damaged probability file: one log line, as on a page

    def decided(self) -> set[str]:
        """The Ids with a decision in the corrections file."""
        return set(read_corrections(self.corrections)["Id"])


def open_curation(config: InferenceConfig) -> Curation:
    """The runs of `config` with the metric run's test, kaggle and ext embeddings (extracted first where
    missing or stale) and their annotated pool."""
    runs, embedder, pool = open_pool(config, "--serve")
    predictions = ImagePredictions(config, runs)
    return Curation(config, runs, embedder, pool, Path(config.corrections),
                    config.curator or getpass.getuser(), predictions, Explanations(predictions))


def image_page(curation: Curation, query: Query) -> dict:
    """The template values of an image's page: its labels, prediction and nearest annotated images."""
    prediction = curation.predictions.of(query)
    predicted = None if prediction is None else prediction.labels
    rows, cosines = nearest_annotated(curation.pool, query, curation.config.k)
    reference = set(query.reference_labels(predicted))
    neighbours = []
    for row, cosine in zip(rows, cosines, strict=True):
        record = curation.pool.frame.iloc[int(row)]
        labels = parse_target(record["Target"])
        neighbours.append({"id": record["Id"], "set": record["set"], "antibody": record["antibody"],
                           "cosine": f"{cosine:.3f}", "labels": [(c, c in reference) for c in labels]})
    true = query.true
    return {"id": query.image_id, "split": query.kaggle_split, "views": VIEWS,
            "known": None if true is None else
            [(c, LABEL_NAMES[c], "same" if predicted is None or c in predicted else "missed") for c in true],
            "predicted": None if predicted is None else
            [(c, LABEL_NAMES[c], "same" if true is None or c in true else "added") for c in predicted],
            "prediction_source": None if prediction is None else prediction.source,
            "ticked": query.reference_labels(predicted),
            "neighbours": neighbours, "curator": curation.curator}


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 picture ([H, W] grey or [H, W, 3] RGB) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(picture)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_png(curation: Curation, query: Query, view: str) -> bytes:
    """A PNG of one view of an image: the RGBY composite as HPA shows it, or one channel in grey."""
    rgby = read_image(curation.runs.data, query.image_id, query.kaggle_split)
    return png_bytes(viz.rgby_to_rgb(rgby) if view == "composite" else rgby[..., COLORS.index(view)])


def explanation_png(curation: Curation, query: Query, label: int) -> bytes:
    """A PNG of the composite under the Grad-CAM map of class `label` (with those of the predicted labels,
    computed together); InferenceError without a trained fold."""
    prediction = curation.predictions.of(query)
    if prediction is None:
        raise InferenceError("no trained classifier fold to explain")
    maps = curation.explanations.maps(query, sorted({*prediction.labels, label}))
    rgb = viz.rgby_to_rgb(read_image(curation.runs.data, query.image_id, query.kaggle_split))
    return png_bytes(viz.heatmap_overlay(rgb, maps[label]))


def thumbnail_png(curation: Curation, image_id: str) -> bytes:
    """A PNG of an image's small composite for a list: an annotated image's, else a test image's."""
    row = curation.pool.position(validate_id(image_id))
    split = "test" if row is None else curation.pool.split(row)
    return png_bytes(load_thumbnail(curation.runs.data, image_id, split))


def queue_rows(queue: ReviewQueue, start: int, stop: int, decided: set[str]) -> list[dict]:
    """Template values of a queue's rows start..stop: position (from 1), Id, classes, detail, decided."""
    return [{"pos": pos, "id": row.Id, "labels": parse_target(row.Target), "detail": row.detail,
             "decided": row.Id in decided}
            for pos, row in enumerate(queue.rows.iloc[start:stop].itertuples(), start + 1)]


def queue_summary(queue: ReviewQueue, decided: set[str]) -> dict:
    """Template values of a queue's heading: name, title, note, decided / total."""
    return {"name": queue.name, "title": queue.title, "note": queue.note,
            "decided": int(queue.rows["Id"].isin(decided).sum()), "total": len(queue.rows)}


def class_filter(cls: str) -> int | None:
    """The class of a `cls` filter ("" for none); DataError unless it is a class number 0..27."""
    if cls == "":
        return None
    if not cls.isdigit() or not 0 <= int(cls) < NUM_CLASSES:
        raise DataError(f"unknown class filter {cls!r}: a class number 0..{NUM_CLASSES - 1}")
    return int(cls)


def report_table(report: pd.DataFrame, sort: str, order: str, cls: int | None) -> pd.DataFrame:
    """The noise report's REPORT_COLUMNS sorted, with only the images that hold class `cls` or whose
    neighbours' majority does (all when None)."""
    table = report[REPORT_COLUMNS]
    if cls is not None:
        held = [targets_to_matrix(table[column])[:, cls] > 0 for column in ("Target", "majority")]
        table = table[held[0] | held[1]]
    return table.sort_values(sort, ascending=order == "asc", kind="stable", na_position="last")


def create_app(curation: Curation, allowed_hosts: list[str] | None = None, token: str | None = None
               ) -> FastAPI:
    """The web app over one Curation. Without `token`, requests must name one of `allowed_hosts` (default:
    the served address and localhost) in their Host header; with it, any host name (colleagues use the
    machine's), but every request must carry the token (URL or cookie), else 403. A POST from a page of
    another origin is refused, so that no other web page the curator has open can send decisions (or read
    pages by DNS rebinding: such a page has neither the local host name nor the token)."""
    app = FastAPI(title="hpa-tf curation", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or (
        ["*"] if token else sorted({curation.config.host, *LOCAL_HOSTS})))

    def page(request: Request, name: str, status: int = 200, **values) -> HTMLResponse:
        values = {"label_names": LABEL_NAMES, "queue_page": QUEUE_PAGE, **values}
        return TEMPLATES.TemplateResponse(request, name, values, status_code=status)

    if token:
        @app.middleware("http")
        async def require_token(request: Request, call_next):
            presented, in_url = presented_token(request)
            if not token_accepted(presented, token):
                had = "a wrong" if presented else "no"
                return page(request, "error.html", 403, message=(
                    f"This page needs its access token and the request had {had} token: open the address "
                    "printed when the server started (it ends in ?token=...)"))
            response = await call_next(request)
            if in_url:  # kept, so that the page's links and forms work without it
                response.set_cookie(cookie_name(request), token, httponly=True, samesite="strict")
            return response

    def refused(request: Request, error: HpaTfError) -> HTMLResponse:
        """The error page: 404 for an image in none of the embedding files, 400 for bad input."""
        return page(request, "error.html", 404 if isinstance(error, InferenceError) else 400,
                    message=str(error))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        counts = curation.pool.frame["set"].value_counts().to_dict()
        decided, queues = curation.decided(), []
        for name in TITLES:
            if name == "noise" and not curation.report_ready:
                queues.append({"name": name, "title": TITLES[name], "pending": True})
                continue
            queue = curation.queue(name)
            queues.append({**queue_summary(queue, decided),
                           "rows": queue_rows(queue, 0, QUEUE_PREVIEW, decided)})
        return page(request, "index.html", counts=counts, corrections=curation.corrections, queues=queues)

    @app.get("/queue/{name}", response_class=HTMLResponse)
    def review_queue(request: Request, name: str, page_number: str = "1"):
        try:
            queue = curation.queue(name)
            start, pages = page_bounds(len(queue.rows), page_number, QUEUE_PAGE)
        except HpaTfError as error:
            return refused(request, error)
        decided = curation.decided()
        return page(request, "queue.html", queue=queue_summary(queue, decided), page_number=int(page_number),
                    pages=pages, rows=queue_rows(queue, start, start + QUEUE_PAGE, decided))

    @app.get("/thumbnail/{image_id}")
    def thumbnail(image_id: str):
        try:
            return Response(thumbnail_png(curation, image_id), media_type="image/png")
        except HpaTfError as error:
            return Response(str(error), status_code=404)

    @app.get("/search")
    def search(request: Request, id: str = ""):  # noqa: A002 (the form's field name)
        try:
            return RedirectResponse(f"/image/{validate_id(id.strip())}", status_code=303)
        except HpaTfError as error:
            return refused(request, error)

    @app.get("/image/{image_id}", response_class=HTMLResponse)
    def show(request: Request, image_id: str, saved: str = "", queue: str = "", pos: str = ""):
        try:
            query = curation.query(image_id)
            place = neighbours_in_queue(curation.queue(queue), image_id, pos) if queue else None
        except HpaTfError as error:
            return refused(request, error)
        return page(request, "image.html", saved=saved, place=place, **image_page(curation, query))

    @app.get("/png/{image_id}/{view}")
    def png(request: Request, image_id: str, view: str):
        if view not in VIEWS:
            return Response(f"unknown view {view!r}; one of {VIEWS}", status_code=404)
        try:
            query = curation.query(image_id)
        except HpaTfError as error:
            return Response(str(error), status_code=404)
        return Response(image_png(curation, query, view), media_type="image/png")

    @app.get("/explain/{image_id}/{label}.png")
    def explain(image_id: str, label: int):
        if not 0 <= label < NUM_CLASSES:
            return Response(f"class {label} is not a class number 0..{NUM_CLASSES - 1}", status_code=404)
        try:
            query = curation.query(image_id)
            return Response(explanation_png(curation, query, label), media_type="image/png")
        except HpaTfError as error:
            return Response(str(error), status_code=404)

    @app.post("/image/{image_id}/labels")
    def correct(request: Request, image_id: str, label: Annotated[list[str] | None, Form()] = None,
                labels: str = Form(""), who: str = Form(""), queue: str = Form(""), pos: str = Form("")):
        """A decision: the ticked classes (`label`, one per checkbox) and any typed in `labels`."""
        origin = request.headers.get("origin")
        if origin and urlparse(origin).netloc != request.headers.get("host"):
            return page(request, "error.html", 403, message=f"a decision sent from another site ({origin}) "
                                                             "is refused")
        try:
            query = curation.query(image_id)
            chosen = parse_labels(" ".join([*(label or []), labels]))
            if queue:
                neighbours_in_queue(curation.queue(queue), query.image_id, pos)
            row = append_correction(curation.corrections, query.image_id, chosen, query.true,
                                    who or curation.curator)
        except HpaTfError as error:
            return refused(request, error)
        log.info(f"correction saved to {curation.corrections}: {row}")
        place = {"queue": queue, "pos": pos} if queue else {}
        return RedirectResponse(f"/image/{query.image_id}?{urlencode({'saved': row['Target'], **place})}",
                                status_code=303)

    @app.get("/noise-report", response_class=HTMLResponse)
    def noise_report(request: Request, sort: str = "rank", order: str = "asc", page_number: str = "1",
                     cls: str = ""):
        try:
            if sort not in REPORT_COLUMNS or order not in ("asc", "desc"):
                raise DataError(f"sort by one of {REPORT_COLUMNS}, order asc or desc")
            chosen = class_filter(cls)
            table = report_table(curation.report, sort, order, chosen)
            start, pages = page_bounds(len(table), page_number, REPORT_PAGE)
        except HpaTfError as error:
            return refused(request, error)
        shown = table.iloc[start:start + REPORT_PAGE].astype(object).where(lambda t: t.notna(), "")
        rows = [{**row, "Target": parse_target(row["Target"]), "majority": parse_target(row["majority"])}
                for row in shown.to_dict("records")]
        return page(request, "report.html", rows=rows, columns=REPORT_COLUMNS, sort=sort, order=order,
                    cls=cls, page_number=int(page_number), pages=pages, first=start + 1,
                    last=start + len(shown), total=len(table), classes=range(NUM_CLASSES))

    return app


def serve(config: InferenceConfig) -> None:
    """`infer.py --serve`: the curators' page on config.host:config.port until interrupted."""
    import uvicorn

    curation = open_curation(config)
    curation.warm()
    token = access_token(config.host, config.token)
    log.info(f"curation page on {' or '.join(start_urls(config.host, config.port, token))} (corrections "
             f"go to {curation.corrections}; Ctrl+C stops it)")
    uvicorn.run(create_app(curation, token=token), host=config.host, port=config.port, log_level="warning")
