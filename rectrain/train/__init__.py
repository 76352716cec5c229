"""Train state, the jitted step, the streaming loop and checkpoints."""

from rectrain.train.step import (StepOutput, TrainState, init_train_state, make_multi_step,
                                 make_predict, make_train_step, weighted_logloss)
