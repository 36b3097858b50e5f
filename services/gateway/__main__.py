from libs.common.runner import serve
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    serve("services.gateway.bootstrap:create_gateway_app", GatewaySettings(), service="gateway")
