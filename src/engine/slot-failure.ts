/**
 * How one sequence of a batched run fails alone. A session group merges the turns of different
 * callers into one run; when one caller's listener throws, that caller's turn must fail and the
 * others go on. The group's listener wrappers turn such a throw into a SlotFailure: the run then
 * ends that slot alone (no more tokens or events for it, its unrecorded tokens dropped from its
 * cache row) and, once the slot is handed over (its row released), calls `settle` instead of
 * onSequenceDone. Anything else a listener throws still ends the whole run.
 */
export class SlotFailure extends Error {
  constructor(
    /** What the listener threw: the error the failed sequence's caller gets. */
    readonly error: unknown,
    /** Called once the slot is handed over (its cache row free again). */
    readonly settle: () => void,
  ) {
    super(`a sequence's listener failed: ${String((error as Error)?.message ?? error)}`);
    this.name = 'SlotFailure';
  }
}
