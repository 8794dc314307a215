"""The training loop: a GradientTape step in a tf.function, several steps a call.

Small CNNs are bound by Python overhead per step, not by arithmetic, so one
``tf.function`` call runs a loop of several steps and hands back every
step's loss, accuracy and learning rate at once: one device sync per call,
yet one event per step. The number of steps a call is picked from the
measured step time so that pause and stop still answer within a fraction of
a second. Between calls the loop checks the control flags, checkpoints, and
handles out-of-memory and NaN.

Metrics follow Keras: a step's loss and accuracy are its batch's means (the
summed losses over the batch's real size, also for a short last batch and
across replicas); an epoch's are the means over its examples.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from engine.config import ConfigError, RunConfig
from engine.models import build_model
from engine.run.control import ControlState
from engine.run.events import EventWriter
from engine.run.facts import FINISHED_REASONS
from engine.train import precision
from engine.train.best import BestKeeper
from engine.train.data import DataBundle, load_data, standardizes, with_delays
from engine.train.evaluate import evaluate_model, record_evaluation
from engine.train.faults import Faults
from engine.train.fine_tune import FineTuning, preprocessing_note
from engine.train.optimizers import current_learning_rate, make_optimizer
from engine.train.strategy import (
    Agreement,
    NonChiefEvents,
    StrategyInfo,
    configure_devices,
    make_strategy,
    remove_scratch,
    scratch_checkpoint_dir,
    take_chief_state,
)
from engine.train.xla import use_xla

# More steps a call gain nothing measurable: one device sync per 64 steps is noise.
MAX_STEPS_PER_CALL = 64
# Controls are obeyed between calls, so a call's length is how long pause, stop and a
# remedy wait (one step at least). Aiming at a quarter of a second keeps a call under
# half a second even when the next steps run twice as slow as the last ones.
TARGET_CALL_SECONDS = 0.25
AUX_LOSS_WEIGHT = 0.3  # GoogLeNet's weight for its auxiliary classifiers

log = logging.getLogger("convdeck.trainer")


class OutOfMemory(Exception):
    """The train step ran out of device memory; no weight was changed by it."""

    def __init__(self, step: int, batch_size: int, message: str) -> None:
        super().__init__(message)
        self.step, self.batch_size, self.message = step, batch_size, message


class ApplyRemedy(Exception):
    """A remedy was asked for; the worker checkpoints, then restarts with it applied."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Rewind(Exception):
    """The weights went back to a checkpoint; the epoch restarts from its data position."""


class StopTraining(Exception):
    """Training ends early, for the reason given: ``stopped`` or ``pruned`` (a ``stop``
    command's), ``nan`` (``train.on_nan = "stop"``) or ``early_stop`` (``train.early_stop_patience``)."""


@dataclass
class CallResult:
    """What one call of the multi-step train function produced, one entry a step."""

    losses: np.ndarray
    accuracies: np.ndarray
    learning_rates: np.ndarray
    examples: np.ndarray
    seconds: float


class EpochMeans:
    """An epoch's loss and accuracy so far: means over its examples, as Keras reports them.

    A step counts by its real batch size, so a short last batch weighs what
    its examples do. Steps are kept one by one (a few numbers each) so that a
    NaN rewind, which goes back to a checkpoint inside the epoch, drops
    exactly the steps it undoes. A worker that resumes inside an epoch
    starts with none: its means cover the examples it trained itself.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[int, float, float, float]] = []  # step, examples, loss sum, correct

    def add(self, step: int, examples: float, loss: float, accuracy: float) -> None:
        """Record one step: its batch's real size and its mean loss and accuracy."""
        self._steps.append((step, examples, loss * examples, accuracy * examples))

    def drop_after(self, step: int) -> None:
        """Forget the steps after ``step`` (the weights went back to it)."""
        self._steps = [s for s in self._steps if s[0] <= step]

    def clear(self) -> None:
        self._steps.clear()

    @property
    def examples(self) -> int:
        return int(round(sum(s[1] for s in self._steps)))

    def means(self) -> dict:
        """``loss``, ``accuracy`` and ``train_examples`` (what they are means over); {} for none."""
        examples = sum(s[1] for s in self._steps)
        if not examples:
            return {}
        return {
            "loss": sum(s[2] for s in self._steps) / examples,
            "accuracy": sum(s[3] for s in self._steps) / examples,
            "train_examples": self.examples,
        }


class Trainer:
    """Trains one run's config, reporting through events and obeying control flags.

    Args:
        config: the validated run config.
        run_dir: the run directory (checkpoints/, tensorboard/, model.keras).
        events: where events go.
        control: flags set by the control socket.
        faults: injected faults (tests on a CPU).
        evaluate_at_end: evaluate the trained weights when the run finishes (the
            worker's runs do), before the ``finished`` event.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        events: EventWriter,
        control: ControlState | None = None,
        faults: Faults | None = None,
        evaluate_at_end: bool = False,
    ) -> None:
        self.config = config
        self.evaluate_at_end = evaluate_at_end
        self.run_dir = Path(run_dir)
        self.events = events
        self.control = control or ControlState()
        self.faults = faults or Faults()
        self.step = 0
        # Progress inside the epoch counts examples, not steps, so a remedy that
        # changes the batch size resumes at the same place in the data.
        self.epoch = 0
        self.examples_in_epoch = 0
        self.steps_per_call = config.train.steps_per_call or 1
        self.last_metrics: dict = {}
        self.epoch_means = EpochMeans()
        self.best_val_accuracy: float | None = None
        self.weights_tainted = False
        self._saved_step: int | None = None
        self._last_save_step = 0
        """The step of the last checkpoint: the next falls due ``checkpoint_every`` after it."""
        self._iterator = None
        self._iterator_end = 0
        self._iterator_position: tuple[int, int] | None = None

    # ----- setup -------------------------------------------------------------

    def setup(self, resume: bool = False, progress_from: str | None = None) -> None:
        """Build data, model, optimizer and checkpointing; restore when resuming.

        Args:
            resume: restore the latest checkpoint of ``checkpoints/``.
            progress_from: a checkpoint of an earlier model (a model-changing
                remedy) to take only the step and data position from.
        """
        train = self.config.train
        configure_devices(train)
        self.dist: StrategyInfo = make_strategy(train)
        if not self.dist.is_chief:
            # Multi-worker: steps, epochs and checkpoints are the chief's record.
            self.events = NonChiefEvents(self.events)
        self._check_batch_divides()
        tf.keras.utils.set_random_seed(train.seed)
        self.policy = precision.apply_policy(train.mixed_precision)
        self.data: DataBundle = load_data(
            self.config.data, train.batch_size, seed=train.seed, standardize=standardizes(self.config)
        )
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self.steps_per_epoch * train.epochs
        with self.dist.strategy.scope():
            self.model = build_model(self.config.model, self.data.input_shape, self.data.num_classes)
            self.fine_tuning = FineTuning(self.config, self.model)
            rate_factor = self.fine_tuning.rate_factor if train.fine_tune_at_epoch else None
            self.optimizer = make_optimizer(train, self.steps_per_epoch, self.total_steps, rate_factor)
            self.optimizer.build(self.fine_tuning.tunable_variables())
            self._make_checkpointing()
        self.restored_from = self._restore(sync=False) if resume else None
        if self.restored_from is None and progress_from:
            self.restored_from = self._restore_progress(progress_from)
        if self.dist.multi_worker:
            # Once, on every worker alike: a worker has no checkpoint of its own.
            self.restored_from = self._take_chief_state(self.restored_from)
            self._agreement = Agreement(self.dist.strategy)
        self._compile_functions()
        self.tensorboard = (
            tf.summary.create_file_writer(str(self.run_dir / "tensorboard"))
            if self.dist.is_chief
            else tf.summary.create_noop_writer()
        )

    @property
    def per_replica_batch(self) -> int:
        return self.config.train.batch_size // self.dist.replicas

    def _check_batch_divides(self) -> None:
        batch, replicas = self.config.train.batch_size, self.dist.replicas
        if batch % replicas:
            raise ConfigError(
                f"train.batch_size {batch} does not split over {replicas} replicas; "
                f"use a multiple of {replicas}, e.g. {max(replicas, batch // replicas * replicas)}"
            )

    def _steps_per_epoch(self) -> int:
        steps = max(1, self.data.steps_per_epoch // self.config.train.accumulation_steps)
        cap = self.config.train.steps_per_epoch
        return min(steps, cap) if cap else steps

    def _make_checkpointing(self) -> None:
        self.step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.examples_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples")
        self.progress = dict(step=self.step_var, epoch=self.epoch_var, examples_in_epoch=self.examples_var)
        directory = self.run_dir / "checkpoints"
        if not self.dist.is_chief:
            # Every worker takes part in a save; only the chief's copy is kept.
            directory = scratch_checkpoint_dir(self.run_dir, self.dist.worker_index)
            remove_scratch(directory)
        self.best = BestKeeper(self.config.train, self.model, directory)
        # A restore must find all of these; the best's variables are restored apart, as
        # checkpoints written before they existed lack them.
        self._restorable = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, **self.progress)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, **self.progress, **self.best.variables
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            str(directory),
            max_to_keep=self.config.train.keep_checkpoints,
        )

    def _restore(self, sync: bool = True) -> int | None:
        path = self.manager.latest_checkpoint
        if path is not None:
            self._restorable.restore(path).assert_existing_objects_matched().expect_partial()
            tf.train.Checkpoint(**self.best.variables).restore(path).expect_partial()
            self.best.after_restore()
        restored = None if path is None else self._read_progress()
        if sync and self.dist.multi_worker:
            restored = self._take_chief_state(restored)
        return restored

    def _take_chief_state(self, restored: int | None) -> int | None:
        """Multi-worker: every worker takes the chief's weights, optimizer state and progress."""
        variables = [
            *self.model.variables,
            *self.optimizer.variables,
            *self.progress.values(),
            *self.best.variables.values(),
        ]
        chief_restored = take_chief_state(
            self.dist.strategy, variables, -1 if restored is None else restored
        )
        return None if chief_restored < 0 else self._read_progress()

    def _restore_progress(self, path: str) -> int:
        tf.train.Checkpoint(**self.progress).restore(path).expect_partial()
        return self._read_progress()

    def _read_progress(self) -> int:
        self.step = int(self.step_var.numpy())
        self.epoch = int(self.epoch_var.numpy())
        self.examples_in_epoch = int(self.examples_var.numpy())
        self._saved_step = self._last_save_step = self.step
        return self.step

    # ----- the compiled step -------------------------------------------------

    def _compile_functions(self) -> None:
        self._nan_faults = bool(self.faults.nan_steps)
        self.jit_compile = self._use_xla()
        self._replica_step_fn = tf.function(self._replica_step, jit_compile=self.jit_compile)
        self._train_calls = tf.function(self._train_loop, reduce_retracing=True)
        self._evaluate = tf.function(self._evaluate_dataset)

    def _use_xla(self) -> bool:
        """``train.jit_compile`` resolved for this run: "auto" is XLA on GPUs only."""
        on_gpu = all(tf.DeviceSpec.from_string(d).device_type == "GPU" for d in self.dist.local_devices)
        return use_xla(self.config.train.jit_compile, on_gpu)

    def _loss_and_accuracy(self, outputs, labels, examples=None):
        """Loss and accuracy of a batch; with ``examples``, this replica's share of an update's.

        Summed over the batch's examples, then divided by ``examples``: the
        real number of examples in the whole update, on every replica and in
        every micro-batch. Summing the shares over replicas and micro-batches
        gives the update's means, and the gradients the optimizer all-reduces
        (a sum) are those of the mean loss. Without it, the batch's own size.
        """
        aux_outputs = []
        if isinstance(outputs, (list, tuple)):
            outputs, aux_outputs = outputs[0], list(outputs[1:])
        loss = self._crossentropy_sum(outputs, labels)
        for aux in aux_outputs:
            loss += AUX_LOSS_WEIGHT * self._crossentropy_sum(aux, labels)
        predicted = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(predicted == tf.cast(labels, tf.int32), tf.float32))
        count = tf.cast(tf.shape(labels)[0], tf.float32) if examples is None else examples
        return loss / count, correct / count

    def _crossentropy_sum(self, logits, labels):
        logits = tf.cast(logits, tf.float32)
        smoothing = self.config.train.label_smoothing
        if smoothing:
            onehot = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1])
            per_example = tf.keras.losses.categorical_crossentropy(
                onehot, logits, from_logits=True, label_smoothing=smoothing
            )
        else:
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(labels, tf.int32), logits=logits
            )
        return tf.reduce_sum(per_example)

    def _replica_step(self, images, labels, poison, examples):
        """Loss and accuracy shares and gradients of one micro-batch (changes no weight)."""
        with tf.GradientTape() as tape:
            outputs = self.model(images, training=True)
            loss, accuracy = self._loss_and_accuracy(outputs, labels, examples)
            if self._nan_faults:
                # nan:step=N fault: a NaN loss that also poisons the gradients, as a real
                # one would. A multiplier, not tf.where: where's gradient flows through
                # both branches. Traced only when asked for: it costs 3% of a LeNet step.
                loss = loss * tf.where(poison, float("nan"), 1.0)
            scaled = precision.scale_loss(self.optimizer, loss)
        grads = tape.gradient(scaled, self.model.trainable_variables)
        return loss, accuracy, grads

    def _replica_update(self, batches, poison):
        """On one replica: gradients of its micro-batches, summed, then one update."""
        local, examples = self._update_examples(batches)
        total_loss, total_accuracy, summed = 0.0, 0.0, None
        for images, labels in batches:  # unrolled: accumulation is fixed per config
            loss, accuracy, grads = self._replica_step_fn(images, labels, poison, examples)
            total_loss += loss
            total_accuracy += accuracy
            summed = grads if summed is None else [a + b for a, b in zip(summed, grads)]  # noqa: B905 (autograph converts zip; strict= is not passed through)
        self.optimizer.apply_gradients(zip(summed, self.model.trainable_variables))  # noqa: B905
        return total_loss, total_accuracy, local

    def _update_examples(self, batches):
        """This replica's examples in an update, and every replica's: what the sums divide by.

        Full batches have a static size, known when the step is traced: then
        the update holds the configured global batch times the accumulation
        steps. A short batch (a training split smaller than one batch, or
        data fed by hand) is counted, and the counts summed over the replicas
        with one all-reduce: the global batch's real size, which dividing by
        the configured size would overstate.
        """
        local = tf.add_n([tf.cast(tf.shape(labels)[0], tf.float32) for _, labels in batches])
        if all(labels.shape[0] == self.per_replica_batch for _, labels in batches):
            return local, tf.constant(float(self.images_per_step))
        if self.dist.replicas == 1:
            return local, local
        return local, tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)

    def _one_update(self, iterator, poison):
        """One optimizer update from ``accumulation_steps`` micro-batches, on every replica.

        Returns:
            The update's mean loss and accuracy, and its number of examples.
        """
        batches = tuple(next(iterator) for _ in range(self.config.train.accumulation_steps))
        strategy = self.dist.strategy
        shares = strategy.run(self._replica_update, args=(batches, poison))
        self.step_var.assign_add(1)
        total = tf.distribute.ReduceOp.SUM
        return tuple(strategy.reduce(total, share, axis=None) for share in shares)

    def _train_loop(self, iterator, steps, nan_step):
        """Run ``steps`` updates; per-step loss, accuracy, learning rate and examples come back together."""
        losses = tf.TensorArray(tf.float32, size=steps)
        accuracies = tf.TensorArray(tf.float32, size=steps)
        rates = tf.TensorArray(tf.float32, size=steps)
        examples = tf.TensorArray(tf.float32, size=steps)
        for i in tf.range(steps):
            poison = self.step_var + 1 == nan_step
            # The rate this update uses: read before the update advances the schedule.
            rate = current_learning_rate(self.optimizer)
            loss, accuracy, count = self._one_update(iterator, poison)
            losses = losses.write(i, tf.cast(loss, tf.float32))
            accuracies = accuracies.write(i, accuracy)
            rates = rates.write(i, rate)
            examples = examples.write(i, count)
        return losses.stack(), accuracies.stack(), rates.stack(), examples.stack()

    def _evaluate_dataset(self, dataset):
        total_loss, correct, count = 0.0, 0.0, 0.0
        for images, labels in dataset:
            outputs = self.model(images, training=False)
            if isinstance(outputs, (list, tuple)):
                outputs = outputs[0]
            batch = tf.cast(tf.shape(labels)[0], tf.float32)
            loss, accuracy = self._loss_and_accuracy(outputs, labels)
            total_loss += loss * batch
            correct += accuracy * batch
            count += batch
        return total_loss / tf.maximum(count, 1.0), correct / tf.maximum(count, 1.0)

    # ----- the loop ----------------------------------------------------------

    def run(self) -> str:
        """Train to the end; returns the ``finished`` event's reason (``completed``, ``stopped``...).

        Raises:
            OutOfMemory: a step ran out of memory; the weights are those before it.
        """
        self._emit_started()
        for warning in [*self.data.warnings, *self._validation_warnings()]:
            self.events.emit("log", level="warning", message=warning)
        if preprocessing_note(self.config):
            self.events.emit("log", level="info", message=preprocessing_note(self.config))
        self._enter_stage(self.epoch)  # first: a stage change retraces, which would undo the warm-up
        self._warm_up_validation()
        self._started = time.monotonic()
        # A restore point before the first step: a NaN or an out-of-memory
        # error early on has good weights to go back to.
        self.save_checkpoint()
        try:
            while self.epoch < self.config.train.epochs:
                self._enter_stage(self.epoch)
                try:
                    self._train_epoch(self.epoch)
                except _Rewind:
                    continue
                self._end_epoch(self.epoch)
        except StopTraining as stop:
            return self.finish(str(stop))
        return self.finish("completed")

    def _enter_stage(self, epoch: int) -> None:
        """Freeze or unfreeze the base for ``epoch`` (transfer learning); retrace when it changed."""
        message = self.fine_tuning.enter(epoch)
        if message:
            self._compile_functions()  # the traced steps hold the old list of trainable variables
            self.events.emit("log", level="info", message=message)

    def _emit_started(self) -> None:
        self.events.emit(
            "run_started",
            config=self.config.model_dump(mode="json"),
            run_id=self.run_dir.name,
            pid=os.getpid(),
            devices=[d.name for d in tf.config.list_logical_devices()],
            strategy=self.dist.name,
            replicas=self.dist.replicas,
            per_replica_batch=self.per_replica_batch,
            replica_devices=self.dist.devices,
            workers=self.dist.workers,
            worker_index=self.dist.worker_index,
            chief=self.dist.is_chief,
            cluster=self.dist.cluster,
            precision=self.policy,
            jit_compile=self.jit_compile,
            model_name=self.model.name,
            parameters=int(self.model.count_params()),
            data=self.data.description,
            steps_per_epoch=self.steps_per_epoch,
            epochs=self.config.train.epochs,
            total_steps=self.total_steps,
            resumed_from_step=self.restored_from,
        )

    @property
    def images_per_step(self) -> int:
        return self.config.train.batch_size * self.config.train.accumulation_steps

    def _train_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epoch_means.drop_after(self.step)  # after a NaN rewind: the steps it undid
        iterator = self._iterator_at(epoch, self.examples_in_epoch)
        done = self.examples_in_epoch // self.images_per_step
        epoch_end = self.step + max(0, self.steps_per_epoch - done)
        while self.step < epoch_end:
            self._obey_controls()
            self._run_call(iterator, self._steps_for_next_call(epoch_end), epoch)
            if self._validation_due(epoch_end):
                self._validate_within_epoch(epoch)
        # Only an epoch that ran to its end leaves the iterator where the next one starts.
        self._iterator_position = (epoch + 1, 0)

    def _iterator_at(self, epoch: int, examples_in_epoch: int):
        """An iterator whose next batch is the one at this position; one serves the whole run.

        Making a (distributed) iterator and tearing it down costs 0.1-0.4 s of
        Python and thread start-up: more than a whole epoch of a small model on
        small data. So one iterator runs through every epoch left, each
        epoch's batches exactly those of ``train_for_epoch`` (the order a
        resume reproduces), and is remade only when the position jumps (a NaN
        rewind) or the run gains epochs. The later epochs are made inside
        tf.data as the one before ends (``train_for_epochs``): building them
        up front, in windows of 32 epochs, cost an epoch of LeNet on digits
        1-10 s every 32 epochs.
        """
        if (
            self._iterator is not None
            and self._iterator_position == (epoch, examples_in_epoch)
            and epoch < self._iterator_end
        ):
            self._iterator_position = None  # in use: unknown until this epoch ends
            return self._iterator
        self._iterator = None  # let the old one go before making the next
        train = self.config.train
        end = train.epochs
        dataset = self.data.train_for_epochs(
            epoch,
            end,
            batches_per_epoch=self.steps_per_epoch * train.accumulation_steps,
            skip_batches=examples_in_epoch // train.batch_size,
        )
        # Hides the start of each epoch's pipeline behind the end of the one before.
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
        if self.faults.stall_steps:
            dataset = self._with_stall_fault(dataset)
        self._iterator = iter(self.dist.strategy.experimental_distribute_dataset(_shard_by_data(dataset)))
        self._iterator_end, self._iterator_position = end, None
        return self._iterator

    def _with_stall_fault(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """The ``stall:step=N`` fault: step N's batch comes ``stall:seconds`` late, once.

        Called as the iterator is made, whose first batch is the next step's.
        """
        first_step, batches_per_step = self.step + 1, self.config.train.accumulation_steps

        def delay_before(index: int) -> float:
            step, micro_batch = divmod(index, batches_per_step)
            return 0.0 if micro_batch else self.faults.take_stall(first_step + step)

        return with_delays(dataset, delay_before)

    def _steps_for_next_call(self, epoch_end: int) -> int:
        next_checkpoint = self._last_save_step + self.config.train.checkpoint_every
        limit = min(self.steps_per_call, epoch_end - self.step, next_checkpoint - self.step)
        if self._steps_to_next_validation():
            limit = min(limit, self._steps_to_next_validation())  # a call ends where one is due
        fault = self.faults.next_fault_step(self.step)
        if fault is not None:
            # An injected fault gets a call of its own: end this one just before it.
            limit = 1 if fault == self.step + 1 else min(limit, fault - 1 - self.step)
        return max(1, limit)

    def _run_call(self, iterator, steps: int, epoch: int) -> None:
        self._raise_injected_oom()
        nan_step = min(self.faults.pending_nan_steps(), default=-1)
        started = time.perf_counter()
        try:
            outputs = self._train_calls(iterator, tf.constant(steps), tf.constant(nan_step, tf.int64))
            result = CallResult(*(tensor.numpy() for tensor in outputs), seconds=0.0)
        except tf.errors.ResourceExhaustedError as error:
            self._after_oom(str(error))
        result.seconds = time.perf_counter() - started
        self._size_next_call(steps, result.seconds)
        self._report_call(result, epoch)

    def _raise_injected_oom(self) -> None:
        step = self.step + 1
        batch = self.per_replica_batch
        if self.faults.oom_at(step, batch):
            self.faults.mark_fired("oom", step)
            self._after_oom(
                f"OOM when allocating tensor with shape[{batch},...] and type float "
                f"on {(self.dist.local_devices or ['?'])[0]} (injected by CONVDECK_FAULTS)"
            )

    def _after_oom(self, message: str):
        # A step that failed mid-call may have applied the updates before it;
        # the step variable counts exactly those, so the counter stays true.
        completed = int(self.step_var.numpy()) - self.step
        self.step += completed
        self.examples_in_epoch += completed * self.images_per_step
        first_line = message.strip().splitlines()[0] if message.strip() else "out of memory"
        raise OutOfMemory(self.step + 1, self.config.train.batch_size, first_line)

    def _size_next_call(self, steps: int, seconds: float) -> None:
        """The next call's steps: as many as this call's time per step fits in TARGET_CALL_SECONDS.

        Learnt afresh from every call, so a run whose steps slow down (a busier
        machine, a longer epoch pipeline start) shortens its calls at once. The
        first call starts with one step, and its time includes tracing (and XLA
        compiling): it overstates a step, so the second call is short too and
        measures a real one. The count reaches the compiled loop as a tensor,
        so a new count never retraces it.
        """
        if self.config.train.steps_per_call:
            return  # fixed by the user
        wanted = int(TARGET_CALL_SECONDS * steps / max(seconds, 1e-6))
        self.steps_per_call = max(1, min(MAX_STEPS_PER_CALL, wanted))

    def _report_call(self, result: CallResult, epoch: int) -> None:
        steps = len(result.losses)
        per_step = result.seconds / steps
        images = self.images_per_step
        for i in range(steps):
            loss = float(result.losses[i])
            if not math.isfinite(loss):
                self._on_nan(self.step + 1)  # raises: the rest of this call is poisoned too
            self.step += 1
            self.examples_in_epoch += images
            self.epoch_means.add(self.step, float(result.examples[i]), loss, float(result.accuracies[i]))
            self.events.emit(
                "step",
                step=self.step,
                epoch=epoch + 1,
                loss=round(loss, 6),
                accuracy=round(float(result.accuracies[i]), 5),
                learning_rate=float(result.learning_rates[i]),
                images_per_sec=round(images / per_step, 1),
                step_time=round(per_step, 5),
            )
        self.last_metrics.update(loss=float(result.losses[-1]), accuracy=float(result.accuracies[-1]))
        # One write a call (a quarter of a second or so): the next call may be long, or its
        # data stall, and viewers must see the steps done so far, not wait for a later event.
        self.events.flush()
        self._update_status("running", epoch)
        self._write_summaries(result)
        # Counted from the last save, an epoch end's too: at most checkpoint_every steps are
        # ever lost, and a small model with short epochs does not also save mid-epoch.
        if self.step - self._last_save_step >= self.config.train.checkpoint_every:
            self.save_checkpoint()

    def _on_nan(self, step: int) -> None:
        self.faults.mark_fired("nan", step)
        self.weights_tainted = True
        self.events.emit("nan", step=step)
        # Never let NaN weights reach a checkpoint: go back to the last good one.
        restored = self._restore()
        self.weights_tainted = restored is None
        self.events.emit(
            "log",
            level="warning",
            message=f"loss was NaN at step {step}; restored the checkpoint of step {restored}",
        )
        if self.config.train.on_nan == "stop":
            raise StopTraining("nan")
        self.control.request("pause")
        raise _Rewind()

    def _write_summaries(self, result: CallResult) -> None:
        """The call's means over its examples (a point every call, not every step)."""
        with self.tensorboard.as_default(step=self.step):
            tf.summary.scalar("train/loss", float(np.average(result.losses, weights=result.examples)))
            tf.summary.scalar(
                "train/accuracy", float(np.average(result.accuracies, weights=result.examples))
            )
            tf.summary.scalar("train/learning_rate", float(result.learning_rates[-1]))

    def _end_epoch(self, epoch: int) -> None:
        metrics = self.epoch_means.means()  # none when a resume found the epoch's steps all done
        validation = self._validate()
        metrics.update(validation)
        self._write_epoch_summaries(metrics)
        self.last_metrics.update({k: v for k, v in metrics.items() if k != "train_examples"})
        self.epoch, self.examples_in_epoch = epoch + 1, 0
        self.epoch_means.clear()
        self.events.emit("epoch_end", epoch=epoch + 1, step=self.step, **_rounded(metrics))
        self._keep_best(validation, epoch + 1)
        self._saved_step = None  # the same step, but now at the start of the next epoch
        self.save_checkpoint()
        self._stop_if_patience_spent()

    def _write_epoch_summaries(self, metrics: dict) -> None:
        """An epoch's means and validation figures (those present), at the current step."""
        tags = {
            "loss": "train/epoch_loss",
            "accuracy": "train/epoch_accuracy",
            "val_loss": "val/loss",
            "val_accuracy": "val/accuracy",
        }
        with self.tensorboard.as_default(step=self.step):
            for name, tag in tags.items():
                if name in metrics:
                    tf.summary.scalar(tag, metrics[name])

    # ----- validation, the best weights, evaluation ---------------------------

    def _validation_warnings(self) -> list[str]:
        """Settings that need validations, on data that holds none to validate on."""
        train = self.config.train
        names = ("early_stop_patience", "val_every_steps")
        asked = [f"train.{name} is {getattr(train, name)}" for name in names if getattr(train, name)]
        if self.data.val is not None or not asked:
            return []
        return [
            f"{' and '.join(asked)}, but the data has no validation split, so the run never "
            "validates: no best weights, no early stop (set data.validation_split to hold one out)"
        ]

    def _validate(self) -> dict:
        """The current weights' ``val_loss`` and ``val_accuracy``; {} without a validation split."""
        if self.data.val is None:
            return {}
        val_loss, val_accuracy = (float(v) for v in self._evaluate(self.data.val))
        best = self.best_val_accuracy
        self.best_val_accuracy = val_accuracy if best is None else max(best, val_accuracy)
        return {"val_loss": val_loss, "val_accuracy": val_accuracy}

    def _warm_up_validation(self) -> None:
        """Trace (and first run) the evaluation on one validation batch, before the first step.

        A run pays this once anyway; paid here, with the start-up, every
        validation afterwards costs what the next ones will, so the first
        epoch's end already tells the ETA what a validation costs. The
        evaluation changes no weight and draws no random number.
        """
        if self.data.val is not None:
            self._evaluate(self.data.val.take(1))

    def _steps_to_next_validation(self) -> int | None:
        """Steps to the next validation inside an epoch (``train.val_every_steps``), or None."""
        every = self.config.train.val_every_steps
        if not every or self.data.val is None:
            return None
        return every - self.step % every

    def _validation_due(self, epoch_end: int) -> bool:
        """At a multiple of ``val_every_steps``, but not an epoch's last step: its end validates."""
        every = self.config.train.val_every_steps
        return bool(every) and self.data.val is not None and self.step % every == 0 and self.step < epoch_end

    def _validate_within_epoch(self, epoch: int) -> None:
        """A validation between two steps of an epoch: its own event; the epoch's means go on."""
        validation = self._validate()
        self.last_metrics.update(validation)
        self._write_epoch_summaries(validation)
        self.events.emit("validation", step=self.step, epoch=epoch + 1, **_rounded(validation))
        self._keep_best(validation, epoch + 1)
        self._stop_if_patience_spent()

    def _keep_best(self, validation: dict, epoch: int) -> None:
        """Count a validation towards the best; a new best saves its weights in checkpoints/best/."""
        if not validation or self.weights_tainted:
            return
        previous = self.best.best
        path = self.best.record(validation, self.step)
        if path is None:
            return
        if not self.dist.is_chief:
            remove_scratch(self.best.directory)
        self.events.emit(
            "best_checkpoint",
            step=self.step,
            epoch=epoch,
            metric=self.best.metric,
            value=round(validation[self.best.metric], 6),
            previous=None if previous is None else round(previous, 6),
            path=path,
        )

    def _stop_if_patience_spent(self) -> None:
        """End the run (``early_stop``) after ``early_stop_patience`` validations without a new best.

        Not after the last epoch: a run that trained every epoch completed.
        """
        if not self.best.patience_spent or self.epoch >= self.config.train.epochs:
            return
        best, at = self.best.best, int(self.best.step.numpy())
        self.events.emit(
            "log",
            level="info",
            message=f"{self.best.metric} has not improved on {best:.6g} (step {at}) for "
            f"{self.best.patience} validations: stopping early (train.early_stop_patience)",
        )
        raise StopTraining("early_stop")

    def evaluate_now(self, trigger: str) -> dict | None:
        """Evaluate the current weights on the validation split: ``eval.json``, ``mistakes/``, an ``eval`` event.

        Never raises: an evaluation that fails is a log line, and training (or
        the run's end) goes on. Only the chief evaluates a multi-worker run.

        Args:
            trigger: why it runs: ``end`` (the run finished) or ``command`` (``ctl RUN eval``).

        Returns:
            The ``eval`` event, or None when there was none.
        """
        if not self.dist.is_chief:
            return None
        try:
            report = evaluate_model(
                self.model, self.run_dir, self.config, normalization=(self.data.mean, self.data.std)
            )
            return record_evaluation(report, self.run_dir, self.events, step=self.step, trigger=trigger)
        except ConfigError as error:  # no validation split, say: nothing to evaluate on
            self.events.emit("log", level="info", message=f"no evaluation: {error}")
        except Exception as error:  # noqa: BLE001 - an evaluation must never end the run
            log.exception("evaluation at step %s failed", self.step)
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            self.events.emit(
                "log",
                level="warning",
                message=f"evaluation at step {self.step} failed ({type(error).__name__}: {first}); "
                "the run is not affected",
            )
        return None

    # ----- controls ----------------------------------------------------------

    def _obey_controls(self) -> None:
        if self.dist.multi_worker:
            self._obey_controls_together()
            return
        if self.control.paused and not self.control.stop_requested:
            self._pause()
        if self.control.take_checkpoint_request():
            self.save_checkpoint()
        if self.control.take_eval_request():
            self.evaluate_now("command")
        remedy = self.control.take_remedy()
        if remedy:
            raise ApplyRemedy(remedy)
        if self.control.stop_requested:
            self.save_checkpoint()
            raise StopTraining(self.control.stop_reason)

    def _obey_controls_together(self) -> None:
        """Multi-worker: the chief's controls hold on every worker, and any one's stop.

        Steered through the chief: every worker runs calls of the chief's size,
        checkpoints when it does, and waits (inside the agreement) while it is
        paused; a stop on any worker (its SIGTERM) stops them all.
        """
        control = self.control
        checkpoint = False
        if self.dist.is_chief:
            if control.paused and not control.stop_requested:
                # No saving while paused: a save is collective, and the others wait.
                self.events.emit("paused", step=self.step)
                self._update_status("paused", self.epoch)
                while control.paused and not control.stop_requested:
                    control.wait_while_paused()
                self.events.emit("resumed", step=self.step)
                self._update_status("running", self.epoch)
            checkpoint = control.take_checkpoint_request()
            if control.take_eval_request():
                self.evaluate_now("command")  # the chief alone: the others wait at the agreement
            if control.take_remedy():
                self.events.emit(
                    "log",
                    level="warning",
                    message="a multi-worker run cannot apply a remedy in place: stop it and "
                    "resume every worker with `convdeck resume RUN --remedy NAME`",
                )
        elif control.paused:
            control.request("resume")  # a worker's own pause (after a NaN): the chief decides
        (steps, checkpoint_asked), (stops,) = self._agreement(
            [self.steps_per_call, float(checkpoint)], [float(control.stop_requested)]
        )
        self.steps_per_call = max(1, int(steps))
        if checkpoint_asked:
            self.save_checkpoint()
        if stops:
            self.save_checkpoint()
            # The chief's reason (a sweep prunes through the chief's socket); a worker's SIGTERM is a stop.
            raise StopTraining(control.stop_reason)

    def _pause(self) -> None:
        epoch = self.epoch
        self.events.emit("paused", step=self.step)
        self._update_status("paused", epoch)
        while self.control.paused and not self.control.stop_requested:
            self.control.wait_while_paused()
            if self.control.take_checkpoint_request():
                self.save_checkpoint()
            if self.control.take_eval_request():
                self.evaluate_now("command")
            if self.control.remedy:
                break  # a remedy restarts the worker; it resumes unpaused
        self.events.emit("resumed", step=self.step)
        self._update_status("running", epoch)

    def _update_status(self, state: str, epoch: int) -> None:
        self.control.status = {
            "state": state,
            "step": self.step,
            "epoch": epoch + 1,
            "epochs": self.config.train.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            **_rounded(self.last_metrics),
        }

    def save_checkpoint(self) -> str | None:
        """Save model, optimizer and step; never over good weights with NaN ones."""
        if self.weights_tainted:
            return None
        if self._saved_step == self.step:
            return self.manager.latest_checkpoint  # this step is saved already
        self.epoch_var.assign(self.epoch)
        self.examples_var.assign(self.examples_in_epoch)
        path = self.manager.save(checkpoint_number=self.step)
        if not self.dist.is_chief:
            remove_scratch(Path(self.manager.directory))
        self._saved_step = self._last_save_step = self.step
        self.events.emit("checkpoint", step=self.step, path=path)
        return path

    def finish(self, reason: str) -> str:
        """Checkpoint, save model.keras, evaluate (``evaluate_at_end``) and write the ``finished`` event.

        The evaluation comes before ``finished``, so that event is the run's last word.
        Only a run that finished is evaluated, not one stopped, pruned or ended by a NaN.
        """
        self.save_checkpoint()
        self.tensorboard.flush()
        if self.dist.is_chief:
            self.model.save(self.run_dir / "model.keras")
        if self.evaluate_at_end and reason in FINISHED_REASONS:
            self.evaluate_now("end")
        self.events.emit(
            "finished",
            reason=reason,
            steps=self.step,
            elapsed=round(time.monotonic() - getattr(self, "_started", time.monotonic()), 2),
            best_val_accuracy=self.best_val_accuracy,
            **_rounded(self.last_metrics),
        )
        return reason


def _shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shard by element across workers: in-memory datasets have no files to shard by."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
