//! Fakes of the proxy's kernel tools, for tests that check what a proxier sends.

use std::collections::BTreeMap;

use service_proxy::iptables::Table;
use service_proxy::iptables::apply::{ApplyError, Runner};

/// Records restores and serves canned `iptables-save` and `ipset save` output, like
/// kube-proxy's `iptablestest.FakeIPTables`.
#[derive(Clone, Debug, Default)]
pub struct FakeRunner {
    /// Every restore input, in order.
    pub restores: Vec<String>,
    /// What `save` returns per (ipv6, table).
    pub saved: BTreeMap<(bool, Table), String>,
    /// Fail the next this-many restores.
    pub fail_restores: usize,
    /// Every `ipset` command line, with its input after a newline.
    pub ipset_calls: Vec<String>,
    /// What `ipset save` returns.
    pub ipset_saved: String,
}

impl Runner for FakeRunner {
    fn restore(&mut self, _ipv6: bool, input: &[&[u8]]) -> Result<(), ApplyError> {
        let input = String::from_utf8_lossy(&input.concat()).into_owned();
        self.restores.push(input.clone());
        if self.fail_restores > 0 {
            self.fail_restores -= 1;
            return Err(ApplyError::Failed {
                program: "iptables-restore".into(),
                status: "exit status: 2".into(),
                stderr: "iptables-restore: line 1 failed".into(),
                input: input.lines().take(3).collect::<Vec<_>>().join("\n"),
            });
        }
        Ok(())
    }

    fn save(&mut self, ipv6: bool, table: Table) -> Result<String, ApplyError> {
        Ok(self.saved.get(&(ipv6, table)).cloned().unwrap_or_default())
    }

    fn chain_exists(&mut self, ipv6: bool, table: Table, chain: &str) -> Result<bool, ApplyError> {
        let text = self.saved.get(&(ipv6, table)).cloned().unwrap_or_default();
        Ok(text.lines().any(|l| {
            l.strip_prefix(':')
                .and_then(|r| r.split_whitespace().next())
                == Some(chain)
        }))
    }

    fn ipset(&mut self, args: &[&str], input: Option<&[u8]>) -> Result<String, ApplyError> {
        let mut call = args.join(" ");
        if let Some(input) = input {
            call.push('\n');
            call.push_str(&String::from_utf8_lossy(input));
        }
        self.ipset_calls.push(call);
        Ok(if args == ["save"] {
            self.ipset_saved.clone()
        } else {
            String::new()
        })
    }
}
