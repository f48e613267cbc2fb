# The NER ML backend for Label Studio: `python -m backend serve` (gunicorn) on port 9090.
# Build: docker build -t ner-backend .            (CPU torch)
#        docker build -t ner-backend --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .   (CUDA torch;
#        pick the index of the CUDA version your driver supports; run with a GPU reservation, see docker-compose.yml)
FROM python:3.11-slim

# torch is installed first and alone: from PyPI an unpinned or plain torch pulls a multi-GB CUDA build, so the
# index decides which build we get. requirements.txt pins torch==2.13.0, which the +cpu/+cuXXX wheel satisfies.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf-cache \
    MODEL_DIR=/data/models \
    HOST=0.0.0.0 \
    PORT=9090

WORKDIR /app
COPY requirements.txt ./
RUN pip install --index-url "${TORCH_INDEX}" torch==2.13.0 \
    && pip install -r requirements.txt

COPY pyproject.toml README.md ./
COPY backend ./backend
COPY exporters ./exporters
COPY label_config ./label_config
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 backend \
    && mkdir -p /data/models /data/hf-cache \
    && chown -R backend /data
USER backend

VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"
CMD ["python", "-m", "backend", "serve", "--host", "0.0.0.0", "--port", "9090"]
