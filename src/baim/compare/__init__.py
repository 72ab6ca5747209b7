"""``baim compare``: baim against local training, central training, knowledge distillation,
FedAvg, federated distillation and split learning, on the same layout, data and evaluation,
every method run and measured (the paper's Table I and Fig. 2)."""
