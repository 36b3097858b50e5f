from libs.common.runner import serve
from services.campaigns.settings import CampaignsSettings

if __name__ == "__main__":
    serve("services.campaigns.bootstrap:create_campaigns_app", CampaignsSettings(), service="campaigns")
