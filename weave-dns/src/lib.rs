//! weaveDNS: replicated names and a DNS server (issue: weaveDNS). Not implemented yet: this crate only reserves its place in the workspace.
