package audit

// Phases of an EXECUTION_FAILED event, in details.phase.
const (
	// PhaseValidation: the plan was invalid; Stage-3 was not called.
	PhaseValidation = "validation"
	// PhaseStage3: the handler, that is Stage-3 or the way to it, returned
	// an error.
	PhaseStage3 = "stage3"
	// PhaseInternal: the validator or the handler panicked.
	PhaseInternal = "internal"
	// PhaseInterrupted: the Stage-4 process running the execution stopped
	// before it ended; written by the log when its store hands the
	// execution out (Store.Interrupted). After EXECUTION_STARTED the plan
	// may have run.
	PhaseInterrupted = "interrupted"
)
