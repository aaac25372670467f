//! The command line: `keygate serve` (the default), and the commands that work on the store.

use clap::{Parser, Subcommand};

use crate::config::ConfigArgs;

#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version,
    about = "API key gateway for OpenAI-compatible LLM APIs"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway (the default when no command is given).
    Serve,
}
