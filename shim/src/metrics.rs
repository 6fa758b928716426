//! A container's cgroup counters as containerd's cgroup v2 metrics message
//! (`io.containerd.cgroups.v2.Metrics`, containerd/cgroups' `stats/v2/metrics.proto`), which
//! `ctr task metrics` and the CRI's stats decode. Only the fields the guest reports are here;
//! prost leaves the others at zero.

use capsule_protocol::pb::ContainerStatsResponse;

/// The type URL containerd decodes the stats by.
pub const TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

#[derive(Clone, PartialEq, prost::Message)]
pub struct Metrics {
    #[prost(message, optional, tag = "1")]
    pub pids: Option<PidsStat>,
    #[prost(message, optional, tag = "2")]
    pub cpu: Option<CpuStat>,
    #[prost(message, optional, tag = "4")]
    pub memory: Option<MemoryStat>,
    #[prost(message, optional, tag = "8")]
    pub memory_events: Option<MemoryEvents>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PidsStat {
    #[prost(uint64, tag = "1")]
    pub current: u64,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuStat {
    #[prost(uint64, tag = "1")]
    pub usage_usec: u64,
    #[prost(uint64, tag = "2")]
    pub user_usec: u64,
    #[prost(uint64, tag = "3")]
    pub system_usec: u64,
    #[prost(uint64, tag = "4")]
    pub nr_periods: u64,
    #[prost(uint64, tag = "5")]
    pub nr_throttled: u64,
    #[prost(uint64, tag = "6")]
    pub throttled_usec: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryStat {
    #[prost(uint64, tag = "1")]
    pub anon: u64,
    #[prost(uint64, tag = "2")]
    pub file: u64,
    #[prost(uint64, tag = "32")]
    pub usage: u64,
    #[prost(uint64, tag = "33")]
    pub usage_limit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MemoryEvents {
    #[prost(uint64, tag = "3")]
    pub max: u64,
    #[prost(uint64, tag = "4")]
    pub oom: u64,
    #[prost(uint64, tag = "5")]
    pub oom_kill: u64,
}

impl From<&ContainerStatsResponse> for Metrics {
    fn from(s: &ContainerStatsResponse) -> Self {
        Metrics {
            pids: Some(PidsStat {
                current: s.pids_current,
                limit: s.pids_max,
            }),
            cpu: Some(CpuStat {
                usage_usec: s.cpu_usage_usec,
                user_usec: s.cpu_user_usec,
                system_usec: s.cpu_system_usec,
                nr_periods: s.cpu_nr_periods,
                nr_throttled: s.cpu_nr_throttled,
                throttled_usec: s.cpu_throttled_usec,
            }),
            memory: Some(MemoryStat {
                anon: s.memory_anon,
                file: s.memory_file,
                usage: s.memory_current,
                usage_limit: s.memory_max,
            }),
            memory_events: Some(MemoryEvents {
                max: s.memory_events_max,
                oom: s.memory_events_oom,
                oom_kill: s.memory_events_oom_kill,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn fields_land_on_containerds_tags() {
        let stats = ContainerStatsResponse {
            memory_current: 300,
            cpu_usage_usec: 7,
            ..Default::default()
        };
        let bytes = Metrics::from(&stats).encode_to_vec();
        // cpu (field 2, length-delimited) holding usage_usec (field 1, varint) = 7.
        assert!(bytes.windows(4).any(|w| w == [0x12, 0x02, 0x08, 0x07]));
        // memory (field 4) holding usage (field 32: tag bytes 0x80 0x02) = 300.
        assert!(bytes.windows(4).any(|w| w == [0x80, 0x02, 0xac, 0x02]));
        assert_eq!(Metrics::decode(&bytes[..]).unwrap(), Metrics::from(&stats));
    }
}
