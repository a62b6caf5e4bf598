"""`camelid serve`: an OpenAI-compatible HTTP API (and the web chat page) on one loaded model.

    from camelid.server.app import create_app
    app = create_app(camelid.load(), n_slots=4)   # a FastAPI app; run it with uvicorn
"""
