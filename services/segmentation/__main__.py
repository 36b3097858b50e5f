from libs.common.runner import serve
from services.segmentation.settings import SegmentationSettings

if __name__ == "__main__":
    serve("services.segmentation.bootstrap:create_segmentation_app", SegmentationSettings(), service="segmentation")
