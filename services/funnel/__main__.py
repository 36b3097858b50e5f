from libs.common.runner import serve
from services.funnel.settings import FunnelSettings

if __name__ == "__main__":
    serve("services.funnel.bootstrap:create_funnel_app", FunnelSettings(), service="funnel")
