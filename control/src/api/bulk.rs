//! A bulk list read and checked as it arrives, on two threads: the body's
//! blocking thread parses and validates each rule
//! (`xdpath_api::rules::read_flow_specs`, `FlowRuleSpec::validate`) and
//! hands the validated rules (plain values, nothing to free elsewhere) over
//! in batches to a checker thread that adds them to the new set
//! ([`BulkRules::push_valid`]: ids given twice, what each rule matches), so
//! the two halves of the work overlap. The answer is the first refused rule
//! in list order, whichever side refused it; a body that fails and
//! malformed JSON are answered before anything else, as when one thread
//! reads. Should the checker thread not start, all of it runs on one
//! thread.

use super::{body::BodyReader, body_failed, too_many, ApiError};
use crate::flow_table::{BulkRules, FlowTableError, NewRules, TableRule};
use crate::rules::{GuestNames, ListError, RuleKind};
use axum::http::StatusCode;
use std::sync::mpsc;

/// Rules per batch handed to the checker.
const BATCH: usize = 4096;

/// Batches in flight between the two threads.
const BATCHES_IN_FLIGHT: usize = 4;

/// Why the reader stopped handing rules over.
#[derive(Debug)]
pub enum Refused {
    /// A rule is not valid (the error carries its index).
    Invalid(FlowTableError),
    /// The checker refused a rule before it.
    Checker,
}

/// The checker's side: the new set, until a rule is refused (with its
/// place in the list).
struct Checker<R: TableRule> {
    bulk: BulkRules<R>,
    failed: Option<(usize, FlowTableError)>,
}

impl<R: TableRule> Checker<R> {
    fn new(cap: usize, expect: usize) -> Self {
        Self {
            bulk: BulkRules::new(cap, expect),
            failed: None,
        }
    }

    fn take(&mut self, rule: R, id: Option<u32>) -> Result<(), Refused> {
        if self.failed.is_some() {
            return Err(Refused::Checker);
        }
        let index = self.bulk.len();
        self.bulk.push_valid(rule, id).map_err(|e| {
            self.failed = Some((index, e));
            Refused::Checker
        })
    }
}

/// Validates the rule at `index` (a stand-in id when it gives none), its
/// guest resolved by `guests`.
fn validate<R: TableRule>(
    index: usize,
    spec: &R::Spec,
    guests: &dyn GuestNames,
) -> Result<(R, Option<u32>), Refused> {
    R::validate(spec, 1, guests)
        .map(|r| (r, R::spec_id(spec)))
        .map_err(|e| Refused::Invalid(e.at(index).into()))
}

/// Reads a list with `read` (given the reader and where each rule goes)
/// and checks it into a new set of at most `cap` rules (room made for
/// `expect`), each rule's guest resolved by `guests` (on the reading
/// thread).
pub fn read_and_check<R>(
    reader: BodyReader,
    cap: usize,
    expect: usize,
    kind: RuleKind,
    guests: &dyn GuestNames,
    read: impl FnOnce(
        BodyReader,
        &mut dyn FnMut(usize, R::Spec) -> Result<(), Refused>,
    ) -> Result<usize, ListError<Refused>>,
) -> Result<NewRules<R>, ApiError>
where
    R: TableRule + Send,
{
    let (tx, rx) = mpsc::sync_channel::<Vec<(R, Option<u32>)>>(BATCHES_IN_FLIGHT);
    std::thread::scope(|scope| {
        let spawned = std::thread::Builder::new()
            .name("xdpath-bulk".into())
            .spawn_scoped(scope, move || {
                let mut checker = Checker::new(cap, expect);
                for batch in rx {
                    for (rule, id) in batch {
                        if checker.take(rule, id).is_err() {
                            // Dropping the receiver tells the reader.
                            return checker;
                        }
                    }
                }
                checker
            });
        let handle = match spawned {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!("bulk replace: no checker thread ({e}); checking on one thread");
                let mut checker = Checker::new(cap, expect);
                let read = read(reader, &mut |i, spec| {
                    let (rule, id) = validate::<R>(i, &spec, guests)?;
                    checker.take(rule, id)
                });
                return answer(read, checker, kind, cap);
            }
        };
        let mut batch = Vec::with_capacity(BATCH);
        let read = read(reader, &mut |i, spec| {
            batch.push(validate::<R>(i, &spec, guests)?);
            if batch.len() < BATCH {
                return Ok(());
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            tx.send(full).map_err(|_| Refused::Checker)
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let checker = handle.join().map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Checking the list failed (internal error); nothing was changed.",
            )
        })?;
        answer(read, checker, kind, cap)
    })
}

/// The answer to a list read by `read` and checked by `checker`: the
/// body's failure or malformed JSON first, then the first refused rule in
/// list order, then one rule too many; else the new set.
fn answer<R: TableRule>(
    read: Result<usize, ListError<Refused>>,
    checker: Checker<R>,
    kind: RuleKind,
    cap: usize,
) -> Result<NewRules<R>, ApiError> {
    let Checker { bulk, failed } = checker;
    // Where the checker refused the list (a conflict is refused by
    // `finish`, which knows the ids). It only saw rules before any the
    // reader refused.
    let refused_at = failed
        .as_ref()
        .map(|(i, _)| *i)
        .or_else(|| bulk.conflict_at());
    let checker_error = |failed: Option<(usize, FlowTableError)>, bulk: BulkRules<R>| match failed {
        Some((_, e)) => ApiError::from(e),
        None => match bulk.finish() {
            Err(e) => ApiError::from(e),
            Ok(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The list was refused without a reason (internal error); nothing was changed.",
            ),
        },
    };
    match read {
        Err(ListError::Io(e)) => Err(body_failed(e)),
        Err(ListError::Rule(e)) => match (e.index(), refused_at) {
            (Some(i), Some(k)) if k < i => Err(checker_error(failed, bulk)),
            _ => Err(e.into()),
        },
        _ if refused_at.is_some() => Err(checker_error(failed, bulk)),
        Ok(_) => bulk.finish().map_err(ApiError::from),
        Err(ListError::Refused(Refused::Invalid(e))) => Err(e.into()),
        Err(ListError::Refused(Refused::Checker)) => Err(checker_error(failed, bulk)),
        Err(ListError::TooMany(_)) => Err(too_many(kind, cap)),
    }
}
