from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelSet(_message.Message):
    __slots__ = ("classes", "template", "templates")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[str]
    template: str
    templates: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, classes: _Optional[_Iterable[str]] = ..., template: _Optional[str] = ..., templates: _Optional[_Iterable[str]] = ...) -> None: ...

class LabelSetRef(_message.Message):
    __slots__ = ("value", "digest")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    value: LabelSet
    digest: str
    def __init__(self, value: _Optional[_Union[LabelSet, _Mapping]] = ..., digest: _Optional[str] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("id", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    data: bytes
    def __init__(self, id: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Scores(_message.Message):
    __slots__ = ("cosine", "probability")
    COSINE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    cosine: _containers.RepeatedScalarFieldContainer[float]
    probability: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, cosine: _Optional[_Iterable[float]] = ..., probability: _Optional[_Iterable[float]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("left", "top", "right", "bottom")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    BOTTOM_FIELD_NUMBER: _ClassVar[int]
    left: int
    top: int
    right: int
    bottom: int
    def __init__(self, left: _Optional[int] = ..., top: _Optional[int] = ..., right: _Optional[int] = ..., bottom: _Optional[int] = ...) -> None: ...

class Snippet(_message.Message):
    __slots__ = ("box", "scores")
    BOX_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    box: Box
    scores: Scores
    def __init__(self, box: _Optional[_Union[Box, _Mapping]] = ..., scores: _Optional[_Union[Scores, _Mapping]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("model_name", "pretrained", "embed_dim", "logit_scale", "temperature", "input_size", "device", "precision", "max_snippets", "max_pixels", "preprocess", "weights_digest")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    PRETRAINED_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    LOGIT_SCALE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MAX_SNIPPETS_FIELD_NUMBER: _ClassVar[int]
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    PREPROCESS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    pretrained: str
    embed_dim: int
    logit_scale: float
    temperature: float
    input_size: int
    device: str
    precision: str
    max_snippets: int
    max_pixels: int
    preprocess: str
    weights_digest: str
    def __init__(self, model_name: _Optional[str] = ..., pretrained: _Optional[str] = ..., embed_dim: _Optional[int] = ..., logit_scale: _Optional[float] = ..., temperature: _Optional[float] = ..., input_size: _Optional[int] = ..., device: _Optional[str] = ..., precision: _Optional[str] = ..., max_snippets: _Optional[int] = ..., max_pixels: _Optional[int] = ..., preprocess: _Optional[str] = ..., weights_digest: _Optional[str] = ...) -> None: ...

class GlobalRequest(_message.Message):
    __slots__ = ("labels", "images")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    labels: LabelSetRef
    images: _containers.RepeatedCompositeFieldContainer[Image]
    def __init__(self, labels: _Optional[_Union[LabelSetRef, _Mapping]] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ...) -> None: ...

class GlobalResult(_message.Message):
    __slots__ = ("id", "scores")
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    id: str
    scores: Scores
    def __init__(self, id: _Optional[str] = ..., scores: _Optional[_Union[Scores, _Mapping]] = ...) -> None: ...

class GlobalResponse(_message.Message):
    __slots__ = ("label_set_digest", "results")
    LABEL_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    label_set_digest: str
    results: _containers.RepeatedCompositeFieldContainer[GlobalResult]
    def __init__(self, label_set_digest: _Optional[str] = ..., results: _Optional[_Iterable[_Union[GlobalResult, _Mapping]]] = ...) -> None: ...

class SnippetRequest(_message.Message):
    __slots__ = ("labels", "image", "snippet_spec", "include_snippets", "zeta", "include_cosines", "include_embeddings")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_SPEC_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SNIPPETS_FIELD_NUMBER: _ClassVar[int]
    ZETA_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_COSINES_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    labels: LabelSetRef
    image: Image
    snippet_spec: str
    include_snippets: bool
    zeta: float
    include_cosines: bool
    include_embeddings: bool
    def __init__(self, labels: _Optional[_Union[LabelSetRef, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., snippet_spec: _Optional[str] = ..., include_snippets: _Optional[bool] = ..., zeta: _Optional[float] = ..., include_cosines: _Optional[bool] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class SnippetResponse(_message.Message):
    __slots__ = ("id", "label_set_digest", "alpha", "beta", "aggregate", "snippet_count", "snippets", "error", "error_code", "snippet_cosine", "view_embeddings")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_COUNT_FIELD_NUMBER: _ClassVar[int]
    SNIPPETS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_COSINE_FIELD_NUMBER: _ClassVar[int]
    VIEW_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    label_set_digest: str
    alpha: _containers.RepeatedScalarFieldContainer[float]
    beta: _containers.RepeatedScalarFieldContainer[float]
    aggregate: _containers.RepeatedScalarFieldContainer[float]
    snippet_count: int
    snippets: _containers.RepeatedCompositeFieldContainer[Snippet]
    error: str
    error_code: str
    snippet_cosine: _containers.RepeatedScalarFieldContainer[float]
    view_embeddings: bytes
    def __init__(self, id: _Optional[str] = ..., label_set_digest: _Optional[str] = ..., alpha: _Optional[_Iterable[float]] = ..., beta: _Optional[_Iterable[float]] = ..., aggregate: _Optional[_Iterable[float]] = ..., snippet_count: _Optional[int] = ..., snippets: _Optional[_Iterable[_Union[Snippet, _Mapping]]] = ..., error: _Optional[str] = ..., error_code: _Optional[str] = ..., snippet_cosine: _Optional[_Iterable[float]] = ..., view_embeddings: _Optional[bytes] = ..., **kwargs) -> None: ...

class TextEmbeddingsRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: LabelSetRef
    def __init__(self, labels: _Optional[_Union[LabelSetRef, _Mapping]] = ...) -> None: ...

class TextEmbeddingsResponse(_message.Message):
    __slots__ = ("label_set_digest", "embed_dim", "embedding")
    LABEL_SET_DIGEST_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    label_set_digest: str
    embed_dim: int
    embedding: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label_set_digest: _Optional[str] = ..., embed_dim: _Optional[int] = ..., embedding: _Optional[_Iterable[float]] = ...) -> None: ...
