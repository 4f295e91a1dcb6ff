//! The subcommands: each module holds its clap arguments, the calls it makes and how it
//! renders their answers.

pub(crate) mod conntest;
pub(crate) mod health;
pub(crate) mod network;
pub(crate) mod peer;
pub(crate) mod remote;
pub(crate) mod route;
pub(crate) mod token;

use serde::Serialize;

use crate::{
    client::Client,
    error::CliError,
    output::{self},
};

/// What every command runs with.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The connected controller.
    pub(crate) client: Client,
    /// `--json`: print the proto3 JSON of the response instead of tables.
    pub(crate) json: bool,
}

impl Ctx {
    /// Prints `message` as JSON (with `--json`) or as `human` renders it.
    pub(crate) fn emit<M: Serialize>(
        &self,
        message: &M,
        human: impl FnOnce(&M) -> String,
    ) -> anyhow::Result<()> {
        output::emit(self.json, message, human)
    }

    /// For responses with an `is_succeeded` flag: when it is false, prints the JSON (with
    /// `--json`) and fails with the controller's message.
    pub(crate) fn ensure_succeeded<M: Serialize>(
        &self,
        succeeded: bool,
        action: &str,
        message: &str,
        response: &M,
    ) -> anyhow::Result<()> {
        if succeeded {
            return Ok(());
        }
        if self.json {
            output::print_text(&output::to_json(response)?)?;
        }
        let message = if message.is_empty() {
            "the controller reported a failure".to_owned()
        } else {
            message.to_owned()
        };
        Err(CliError::NotSucceeded {
            action: action.to_owned(),
            message,
        }
        .into())
    }
}

/// `n thing` or `n things`.
pub(crate) fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
