from libs.common.runner import serve
from services.ingest.settings import IngestSettings

if __name__ == "__main__":
    serve("services.ingest.bootstrap:create_ingest_app", IngestSettings(), service="ingest")
