"""The paper's four datasets as paired DSS tasks: importing this module registers

    dss_svamp   dss_cqa   dss_esnli   dss_anli1

over the paper's released files (gin: `data_locations.data_dir`, default
$DSS_PALM_DIR or ../shared/data/dss_palm), imported on first use into
`data_locations.cache_dir`. Options: `task_options` (see dss_jax/data/options.py);
feature lengths: gin/tasks/<dataset>.gin.
"""

from dss_jax.data import sources
from dss_jax.data.tasks import PAPER_TASK_PREFIX, register_paper_task

TASK_NAMES = tuple(PAPER_TASK_PREFIX + name for name in sources.DATASETS)

for _dataset in sources.DATASETS:
    register_paper_task(_dataset)
