"""The curators' web page (`python infer.py --serve`): search an image or pick one from the noise report;
see its RGBY composite and channels, its nearest annotated images, the classifier's prediction against
the known labels (read from the submission's or the validation's probabilities, else predicted once and
cached) with a Grad-CAM map of each predicted label (loaded after the page); accept or edit the label
set, appended to the corrections CSV. FastAPI + Jinja2 pages rendered on the server, served by uvicorn on
127.0.0.1 by default."""

from __future__ import annotations

import getpass
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
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
from hpa_tf.curation.corrections import append_correction, parse_labels
from hpa_tf.curation.explain import Explanations
from hpa_tf.curation.gallery import read_image
from hpa_tf.curation.pool import AnnotatedPool, Query, find_query, nearest_annotated, open_pool
from hpa_tf.curation.predictions import ImagePredictions
from hpa_tf.curation.report import label_noise_report
from hpa_tf.errors import HpaTfError, InferenceError
from hpa_tf.inference.runs import TrainedRuns
from hpa_tf.labels import LABEL_NAMES, NUM_CLASSES, format_target, parse_target
from hpa_tf.layout import COLORS, RunLayout, validate_id

log = logging.getLogger(__name__)
TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
VIEWS = ("composite", *COLORS)  # the image views a page shows
REPORT_COLUMNS = ["rank", "Id", "set", "Target", "majority", "disagreement", "neighbours"]
REPORT_PAGE = 200  # noise-report rows per page (the report has a row per annotated image)
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

    def query(self, image_id: str) -> Query:
        """The image (its Id checked first: nothing but letters, digits, '-' and '_')."""
        return find_query(self.pool, self.embedder.root, self.runs.data, validate_id(image_id))


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
                           "cosine": f"{cosine:.3f}",
                           "labels": [(LABEL_NAMES[c], c in reference) for c in labels]})
    true = query.true
    return {"id": query.image_id, "split": query.kaggle_split, "views": VIEWS,
            "known": None if true is None else
            [(c, LABEL_NAMES[c], "same" if predicted is None or c in predicted else "missed") for c in true],
            "predicted": None if predicted is None else
            [(c, LABEL_NAMES[c], "same" if true is None or c in true else "added") for c in predicted],
            "prediction_source": None if prediction is None else prediction.source,
            "form_labels": format_target(query.reference_labels(predicted)),
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


def create_app(curation: Curation, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The web app over one Curation. Requests must name one of `allowed_hosts` (default: the served
    address and localhost) in their Host header, and a POST from a page of another origin is refused,
    so that no other web page the curator has open can send decisions (or read pages by DNS rebinding)."""
    app = FastAPI(title="hpa-tf curation", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware,
                       allowed_hosts=allowed_hosts or sorted({curation.config.host, *LOCAL_HOSTS}))

    def page(request: Request, name: str, status: int = 200, **values) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"label_names": LABEL_NAMES, **values},
                                          status_code=status)

    def refused(request: Request, error: HpaTfError) -> HTMLResponse:
        """The error page: 404 for an image in none of the embedding files, 400 for bad input."""
        return page(request, "error.html", 404 if isinstance(error, InferenceError) else 400,
                    message=str(error))

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request):
        counts = curation.pool.frame["set"].value_counts().to_dict()
        return page(request, "index.html", counts=counts, corrections=curation.corrections)

    @app.get("/search")
    def search(request: Request, id: str = ""):  # noqa: A002 (the form's field name)
        try:
            return RedirectResponse(f"/image/{validate_id(id.strip())}", status_code=303)
        except HpaTfError as error:
            return refused(request, error)

    @app.get("/image/{image_id}", response_class=HTMLResponse)
    def show(request: Request, image_id: str, saved: str = ""):
        try:
            query = curation.query(image_id)
        except HpaTfError as error:
            return refused(request, error)
        return page(request, "image.html", saved=saved, **image_page(curation, query))

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
    def correct(request: Request, image_id: str, labels: str = Form(""), who: str = Form("")):
        origin = request.headers.get("origin")
        if origin and urlparse(origin).netloc != request.headers.get("host"):
            return page(request, "error.html", 403, message=f"a decision sent from another site ({origin}) "
                                                             "is refused")
        try:
            query = curation.query(image_id)
            chosen = parse_labels(labels)
        except HpaTfError as error:
            return refused(request, error)
        with curation.lock:
            row = append_correction(curation.corrections, query.image_id, chosen, query.true,
                                    who or curation.curator)
        log.info(f"correction saved to {curation.corrections}: {row}")
        return RedirectResponse(f"/image/{query.image_id}?{urlencode({'saved': row['Target']})}",
                                status_code=303)

    @app.get("/noise-report", response_class=HTMLResponse)
    def noise_report(request: Request, sort: str = "rank", order: str = "asc", page_number: int = 1):
        if sort not in REPORT_COLUMNS or order not in ("asc", "desc") or page_number < 1:
            return refused(request, HpaTfError(f"sort by one of {REPORT_COLUMNS}, order asc or desc, "
                                               "page from 1"))
        table = curation.report[REPORT_COLUMNS].sort_values(sort, ascending=order == "asc", kind="stable",
                                                             na_position="last")
        pages = max(1, -(-len(table) // REPORT_PAGE))
        start = (min(page_number, pages) - 1) * REPORT_PAGE
        shown = table.iloc[start:start + REPORT_PAGE].astype(object).where(lambda t: t.notna(), "")
        return page(request, "report.html", rows=shown.to_dict("records"), columns=REPORT_COLUMNS,
                    sort=sort, order=order, page_number=start // REPORT_PAGE + 1, pages=pages,
                    first=start + 1, last=start + len(shown), total=len(table))

    return app


def serve(config: InferenceConfig) -> None:
    """`infer.py --serve`: the curators' page on config.host:config.port until interrupted."""
    import uvicorn

    curation = open_curation(config)
    log.info(f"curation page on http://{config.host}:{config.port}/ (corrections go to "
             f"{curation.corrections}; Ctrl+C stops it)")
    uvicorn.run(create_app(curation), host=config.host, port=config.port, log_level="warning")
