from common.models.api_key import ApiKey
from common.models.base import Base
from common.models.checkpoint import Checkpoint
from common.models.file import File
from common.models.job import Job
from common.models.job_event import JobEvent
from common.models.job_run import JobRun
from common.models.model import Model
from common.models.secret import TenantSecret
from common.models.tenant import Tenant
from common.models.webhook import WebhookDelivery, WebhookEndpoint
from common.models.worker import Worker

__all__ = ["ApiKey", "Base", "Checkpoint", "File", "Job", "JobEvent", "JobRun", "Model", "Tenant", "TenantSecret",
           "WebhookDelivery", "WebhookEndpoint", "Worker"]
