//! `keygate logs prune|vacuum`: deleting old call-log rows by hand, and converting an older
//! database so that pruning gives disk space back.

use crate::cli::output::say;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::clock::rfc3339;
use crate::config::parse_duration;
use crate::key_ops::Keyring;
use crate::store::retention;
use crate::tasks::retention::prune_before;

#[derive(Subcommand, Debug)]
pub enum LogsCommand {
    /// Delete call-log rows older than a duration, in small batches (the server may keep
    /// serving). The per-key usage rollup is kept: stats, limits and key totals do not change.
    Prune {
        /// Age of the oldest rows kept: `90d`, `12h`, or seconds.
        #[arg(long)]
        older_than: String,
        /// Count the rows that would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Rewrite the database in incremental auto-vacuum mode (once, for databases created
    /// before keygate set it), so that pruning gives the freed space back to the file system.
    /// Stop the server first: the rewrite holds the database's write lock until it is done and
    /// needs free disk space about the size of the database.
    Vacuum,
}

pub async fn run(keyring: &Keyring, command: LogsCommand) -> anyhow::Result<()> {
    let pool = &keyring.pool;
    match command {
        LogsCommand::Prune {
            older_than,
            dry_run,
        } => {
            let age = parse_duration(&older_than)
                .map_err(|err| anyhow::anyhow!("--older-than: {err:#}"))?;
            let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
            let before = keyring.now().saturating_sub(age_ms);
            let when = rfc3339(before);
            if dry_run {
                let rows = retention::count_older(pool, before).await?;
                say!(
                    "Dry run: {rows} call log(s) are older than {when} and would be deleted. \
                     Nothing was changed."
                );
                return Ok(());
            }
            let pruned = prune_before(pool, before, &CancellationToken::new()).await?;
            crate::audit::record_prune(
                pool,
                keyring.now(),
                &crate::audit::Actor::cli(),
                before,
                pruned.rows,
            )
            .await?;
            say!(
                "Deleted {} call log(s) older than {when}; the usage rollup keeps their usage \
                 (stats, limits and key totals are unchanged).",
                pruned.rows
            );
            if pruned.rows > 0 {
                if retention::is_incremental(pool).await? {
                    say!(
                        "{} free page(s) given back to the file system.",
                        pruned.pages_freed
                    );
                } else {
                    say!(
                        "The freed space is reused by new rows; this database predates \
                         incremental auto-vacuum, so the file does not shrink (stop the server \
                         and run `keygate logs vacuum` once to change that)."
                    );
                }
            }
            Ok(())
        }
        LogsCommand::Vacuum => {
            if retention::is_incremental(pool).await? {
                say!("The database already gives freed space back (incremental auto-vacuum); nothing to do.");
                return Ok(());
            }
            retention::convert_to_incremental(pool)
                .await
                .map_err(|err| {
                    let why = match crate::store::unavailable_cause(&err) {
                        Some(cause) => format!(
                            "{cause} (is keygate serving? Stop it first: the rewrite needs the \
                         database to itself)"
                        ),
                        None => format!("{err}"),
                    };
                    anyhow::anyhow!("cannot rewrite the database: {why}. Nothing was changed.")
                })?;
            say!(
                "The database was rewritten in incremental auto-vacuum mode: pruned call logs \
                 now give their space back."
            );
            Ok(())
        }
    }
}
