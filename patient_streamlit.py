"""Sleep Lab Monitor UI (Streamlit). Talks only to the REST API at API_URL."""
import os

import requests
import streamlit as st

API_URL = os.environ.get("API_URL", "http://127.0.0.1:5000").rstrip("/")


def main() -> None:
    st.set_page_config(page_title="Sleep Lab Monitor", layout="wide")
    st.title("Sleep Lab Monitor")
    try:
        requests.get(f"{API_URL}/health", timeout=3).raise_for_status()
        st.success("Server reachable")
    except requests.RequestException:
        st.error(f"The server at {API_URL} is not reachable.")


if __name__ == "__main__":
    main()
