# One slim image for both the API (gunicorn, the default command) and the UI
# (streamlit; docker-compose.yml overrides the command). Non-root, with a healthcheck.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    API_HOST=0.0.0.0 \
    API_PORT=5000 \
    API_WORKERS=2 \
    API_THREADS=4 \
    HEALTHCHECK_URL=http://127.0.0.1:5000/health

WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt

# Only what production runs: the entry points, the sleeplab package, the sample recordings
# and the UI's theme (no tools/, tests/ or benchmarks/; tests/test_deploy.py checks it).
COPY server.py patient_streamlit.py cpap_measurements.py validation.py gunicorn.conf.py ./
COPY sleeplab ./sleeplab
COPY sample_data ./sample_data
COPY .streamlit ./.streamlit

RUN useradd --create-home --uid 10001 sleeplab
USER sleeplab

EXPOSE 5000 8501
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4)"

# The one gunicorn configuration of every deployment (gunicorn.conf.py: app, worker class,
# timeouts); it reads API_HOST/API_PORT/API_WORKERS/API_THREADS from the environment.
CMD ["gunicorn", "--config", "gunicorn.conf.py"]
