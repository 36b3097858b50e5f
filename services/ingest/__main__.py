from libs.common.runner import serve
from services.ingest.bootstrap import create_ingest_app
from services.ingest.settings import IngestSettings

if __name__ == "__main__":
    settings = IngestSettings()
    serve(create_ingest_app(settings), settings, service="ingest")
