# One slim image for both the API (gunicorn, the default command) and the UI
# (streamlit; docker-compose.yml overrides the command). Non-root, with a healthcheck.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    API_WORKERS=2 \
    API_THREADS=4 \
    HEALTHCHECK_URL=http://127.0.0.1:5000/health

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY *.py ./
COPY sample_data ./sample_data
COPY .streamlit ./.streamlit

RUN useradd --create-home --uid 10001 sleeplab
USER sleeplab

EXPOSE 5000 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"

# Shell form so API_WORKERS/API_THREADS can be set per deployment; exec keeps gunicorn as PID 1.
CMD exec gunicorn --workers "$API_WORKERS" --threads "$API_THREADS" --bind 0.0.0.0:5000 --timeout 120 \
    --access-logfile - "server:create_app()"
